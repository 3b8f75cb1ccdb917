"""What running a trained ILM takes, in one bundle.

Every evaluation (generation, text tasks, re-ranking, the retrieval head)
needs the same six things; passing them as one value keeps signatures short
and makes it impossible to pair a model with another run's parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ilm_jax.data.stage2.encoding import PromptEncoder
from ilm_jax.decode.item_trie import ItemTrie
from ilm_jax.models.ilm import ItemLanguageModel


@dataclasses.dataclass(frozen=True)
class TrainedIlm:
  """A trained ILM and its frozen inputs.

  Attributes:
    model: the ItemLanguageModel (frozen LLM module + soft-token encoder).
    encoder_params: the trained encoder's params (host arrays).
    llm_params: the frozen LLM's params.
    cf: float32[users + items, d] CF table, the encoder's input.
    prompt_encoder: turns prompts into token and soft-token slots, as in
      training.
    trie: the item-identifier trie constraining generation.
  """

  model: ItemLanguageModel
  encoder_params: Any
  llm_params: Any
  cf: np.ndarray
  prompt_encoder: PromptEncoder
  trie: ItemTrie

  @property
  def inputs(self) -> tuple:
    """(model, encoder_params, llm_params, cf, prompt_encoder): the leading
    arguments of the ``eval.generative`` / ``eval.retrieval`` functions."""
    return (
      self.model,
      self.encoder_params,
      self.llm_params,
      self.cf,
      self.prompt_encoder,
    )
