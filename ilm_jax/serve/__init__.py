"""Using a trained workdir: the recommender API behind the chat demo.

``Recommender.from_workdir(path)`` (``recommender``) restores what
``launch/train.py`` wrote (``restore``); new users get a CF vector folded
in from the items they name (``fold_in``), found by fuzzy title lookup
(``titles``).
"""
