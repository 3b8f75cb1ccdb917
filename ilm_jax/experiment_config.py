"""Every default of an experiment, as plain data: the recipe in one place.

A config is an ``ml_collections.ConfigDict``; every field carries a comment.
Building one imports no JAX, Flax or orbax (configs are parsed before a
device is touched, and by tools that never train), and the code reads every
choice from it: what stage 2 starts from (``stage2.init``), which parameters
train (``*.train.freeze_regex``; the LLM and the CF table are frozen inputs of
the loss and never reach the optimiser), which skip weight decay
(``*.train.no_decay_regex``).

Both stages are shaped alike: ``stage{1,2}.train.*`` are the shared training
loop's fields, ``stage{1,2}.eval.*`` their evaluations.

Budgets mean the same in every ``configs/<dataset>.py``, selected after a
colon (big_vision's ``parse_arg`` style): ``configs/ml100k.py`` or
``configs/ml100k.py:cpu`` is the 2-core-CPU recipe of the README's main job,
``:small`` runs in a few CPU minutes, ``:full`` is the accelerator-scale
recipe. ``configs/ilm.py:dataset=openp5-beauty,budget=full`` names any
registered dataset.
"""

from __future__ import annotations

import ml_collections

from ilm_jax.data import prompts as P
from ilm_jax.eval import evaluations as E
from ilm_jax.sasrec_config import sasrec_config

BUDGETS = ("cpu", "small", "accel", "full")
# What the ``:small`` recipe evaluates: the test split with held-out
# templates; sequential generation, both text tasks, re-ranking of ALS's
# top N.
SMALL_EVALUATIONS = (
  "generate:sequential:test:unseen",
  "text:description:-:unseen",
  "text:profile:-:unseen",
  "rerank:rerank:test:unseen",
)
# The CPU and accelerator recipes add re-ranking of SASRec's top N (a
# stronger retriever, a higher ceiling).
TEST_EVALUATIONS = (*SMALL_EVALUATIONS, "rerank:rerank:test:unseen:sasrec")
# Full-ranking baselines the "eval" stage can train and report.
BASELINES = ("popularity", "als", "sasrec")
# Logical-axis rules shared by all models: logical name -> mesh axes (a
# tuple, one axis, or None = replicated). ``ilm_jax.sharding.mesh`` applies
# them; configs may override ``mesh.rules``.
MESH_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("vocab", "tensor"),
  ("queries", None),
  ("cf_rows", ("data", "fsdp")),
  ("cf_dim", None),
  ("norm", None),
)
# Stage-2 training steps of the CPU recipe (tests compare budgets by it).
CPU_STAGE2_STEPS = 60


def loop_config() -> ml_collections.ConfigDict:
  """The shared training loop's fields (``stage1.train``, ``stage2.train``)."""
  c = ml_collections.ConfigDict()
  c.num_steps = 1000  # optimiser updates in the whole run
  c.learning_rate = 1e-4  # peak learning rate after warmup
  c.warmup_steps = 100  # linear warmup from 0
  c.end_learning_rate_ratio = 0.1  # cosine decays to this fraction of peak
  c.weight_decay = 0.05  # AdamW decay on every parameter but no_decay_regex
  # Parameters weight decay would only hurt: biases, norms, temperatures
  # (the AdamW convention of BERT and BLIP-2), matched on their path.
  c.no_decay_regex = r"(bias|scale|temperature|lm_bias)$"
  c.adam_b1 = 0.9  # AdamW first-moment decay
  c.adam_b2 = 0.999  # AdamW second-moment decay
  c.grad_clip_norm = 1.0  # global-norm clipping; 0 = off
  c.freeze_regex = ""  # params whose path matches get no updates
  c.seed = 0  # seeds init, data order and per-step randomness
  c.log_every = 10  # steps between TensorBoard / metrics.json records
  c.eval_every = 0  # steps between evaluations; 0 = only at the end
  c.checkpoint_every = 100  # FixedIntervalPolicy interval
  c.keep_checkpoints = 2  # LatestN: checkpoints kept on disk
  # Resuming under other settings or inputs than the checkpoints were
  # trained with is refused; True discards them and trains afresh instead.
  c.restart_if_changed = False
  c.progress_bar = True  # tqdm progress bar on stderr
  return c


def dataset_config() -> ml_collections.ConfigDict:
  """``config.dataset``: which interactions, filtered how."""
  c = ml_collections.ConfigDict()
  c.name = "ml-latest-small"  # a key of ilm_jax.data.DATASETS
  c.path = ""  # file/dir of the raw data; "" = default location
  c.item_text = ""  # item-text CSV/TSV for "interactions"/"openp5"; "" = none
  c.kcore = -1  # k-core filter; -1 = the dataset's default (5)
  c.min_rating = 0.0  # ratings below this are dropped (0 = keep all)
  c.max_history = 20  # history cap in prompts (OpenP5: 20)
  # Item ids: "random" | "sequential" (leaks: next item = last id + 1 often)
  # | "collaborative" (hierarchical k-means of the CF table; OpenP5-C idea).
  c.indexing = "random"
  # "collaborative": a tree of equal-size clusters (codes of 1 + ceil(log10
  # items) digits) or, False, plain k-means (as every run before this field;
  # a saved config without it restores that way).
  c.balanced_tree = True
  c.max_users = -1  # keep only the first N users (-1 = all); CPU runs
  return c


def cf_config() -> ml_collections.ConfigDict:
  """``config.cf``: the implicit-ALS table of items and users."""
  c = ml_collections.ConfigDict()
  c.dim = 64  # CF embedding width d
  c.reg = 1.0  # ALS L2 regularisation (chosen on ML-100K validation)
  c.alpha = 10.0  # ALS confidence slope: c = 1 + alpha * count
  c.sweeps = 15  # ALS sweeps (users then items)
  c.solver = "cholesky"  # "cholesky" (exact) | "cg" (implicit-style)
  c.cg_steps = 3  # conjugate-gradient steps per half-sweep (solver=cg)
  return c


def qformer_config() -> ml_collections.ConfigDict:
  """``config.qformer``: the Q-Former's shape (stage 1 trains it)."""
  c = ml_collections.ConfigDict()
  c.bert_path = ""  # HF BERT dir for the text branch; "" = all-MiniLM-L6-v2
  c.pretrained = True  # False: text branch randomly initialised too
  c.num_layers = 0  # Q-Former depth: first N BERT layers; 0 = all (MiniLM: 6)
  c.num_queries = 8  # K query vectors per entity (1..32)
  c.num_cf_tokens = 4  # tokens the CF vector expands to for cross-attention
  c.cross_attention_freq = 2  # queries cross-attend to CF every N layers
  c.embed_dim = 256  # width of the contrastive (ITC/II/UI) space
  c.max_text_length = 32  # word pieces per item text, incl. [CLS]/[SEP]
  return c


def stage1_config() -> ml_collections.ConfigDict:
  """``config.stage1``: item-language pre-training of the Q-Former."""
  c = ml_collections.ConfigDict()
  c.losses = "all"  # "it" | "it-ii" | "it-ui" | "all" | "ii-ui" | comma list
  c.loss_weights = ml_collections.ConfigDict(
    {"itc": 1.0, "itm": 1.0, "itg": 1.0, "ii": 1.0, "ui": 1.0}
  )  # per-objective weight in the summed loss
  c.batch_size = 32  # global rows per objective (in-batch negatives)
  c.train = loop_config()
  # On ML-100K with every MiniLM layer, 300 steps at 3e-4 take item-text
  # recall@10 from .0074 to .985 (.493 at step 150; README, generation);
  # BLIP-2's 1e-4 is a rate for 250k steps. 600 leave room for catalogues
  # of 3-4k items (latest-small, ML-1M) at 32 rows a step.
  c.train.num_steps = 600
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 50
  c.eval = ml_collections.ConfigDict()
  c.eval.k = 10  # recall@k cut-off of the retrieval evaluation
  c.eval.candidates = 100  # held-out accuracy: top-1 among this many items
  c.eval.batch_size = 256  # entities/texts per encoding batch
  return c


def rerank_config() -> ml_collections.ConfigDict:
  """``config.stage2.rerank``: the LLM re-ranks retrieved candidates."""
  c = ml_collections.ConfigDict()
  c.num_candidates = 20  # N retrieved items the LLM re-ranks
  # Evaluation lists: "als" (the CF table's dot product) or
  # "retrieval_head" (needs stage2.retrieval_weight > 0; its query reads a
  # sequential prompt).
  c.retriever = "als"
  # Inner retrievers whose lists train (``rerank.stage``): "als", and
  # "sasrec" (an inner SASRec, trained in <workdir>/sasrec_inner, so an ILM
  # that re-ranks SASRec's candidates also trains on lists shaped like
  # them); examples_per_task is shared evenly between them.
  c.train_retrievers = ("als",)
  c.order = "retriever"  # candidates shown "retriever" order | "shuffled"
  # Candidate names in prompts and answers: "identifiers" (item_1234) or
  # "letters" (A, B, ...: one token each, as LlamaRec).
  c.labels = "identifiers"
  # Training lists: the last ``train_holdout`` training items of every user
  # are held out of an inner ALS, whose lists for those positions train.
  c.train_holdout = 10
  c.examples_per_task = 2000  # training prompts per re-ranking task (cap)
  c.max_users = -1  # held-out users evaluated (-1 = all)
  c.batch_size = 8  # prompts per scoring call
  return c


def full_evaluations() -> tuple[str, ...]:
  """Every stage-2 evaluation: each task on both splits and template sets.

  Item tasks by generation, then the text tasks (no split), then
  re-ranking split by split (its candidate lists are built per split), of
  ALS's candidates (the config's retriever) and of SASRec's.
  """
  generate = [
    f"{E.GENERATE}:{task}:{split}:{templates}"
    for task in P.ITEM_TASKS
    for split in E.SPLITS
    for templates in E.TEMPLATE_SETS
  ]
  text = [
    f"{E.TEXT}:{task}:{E.NO_SPLIT}:{templates}"
    for task in E.TEXT_TASKS
    for templates in E.TEMPLATE_SETS
  ]
  rerank = [
    f"{E.RERANK}:{task}:{split}:{templates}"
    for split in E.SPLITS
    for task in P.RERANK_TASKS
    for templates in E.TEMPLATE_SETS
  ]
  rerank += [f"{entry}:sasrec" for entry in rerank]
  return tuple(generate + text + rerank)


def stage2_config() -> ml_collections.ConfigDict:
  """``config.stage2``: the ILM on the frozen LLM (accelerator scale).

  Paper-like defaults: long histories, thousands of steps, every user, both
  splits and template sets; ``cpu_budget`` is the 2-core-CPU recipe.
  """
  c = ml_collections.ConfigDict()
  c.variant = "ilm"  # "ilm" | "mlp" (CoLLM) | "text" (ids + soft prompt)
  # What the encoder starts from: "stage1" = the Q-Former of the stage-1 run
  # in ``stage1_dir`` (an error if there is none), "random" = ILM-rand.
  c.init = "stage1"
  c.stage1_dir = "stage1"  # workdir subdirectory of the stage-1 run used
  # The frozen LLM: an offline package ("smollm2", "gemma3-270m"), a Hugging
  # Face folder, a .gguf file, a folder converted by
  # launch/convert_checkpoint.py (restored straight into its shards), or
  # "tiny" (random, tests).
  c.llm = "smollm2"
  # Its parameters' dtype: "auto" = bfloat16 on TPU/GPU, float32 on CPU.
  c.llm_dtype = "auto"
  # Its activations' compute dtype: "auto" = the parameters' dtype (so
  # bfloat16 weights compute in bfloat16 on TPU/GPU), "float32", "bfloat16".
  # Norms, the attention softmax and logits stay float32 either way.
  c.llm_activations = "auto"
  # What the backward pass through the frozen LLM (to the soft tokens)
  # recomputes instead of keeping: "none", "block" (each layer keeps only
  # its input) or "dots" (each layer keeps its projections' outputs). Saves
  # activation memory at the cost of time; results are unchanged.
  c.remat = "none"
  c.tasks = P.ALL_TASKS  # multitask mixture (re-ranking tasks included)
  c.examples_per_task = 2000  # training prompts per task (sampled)
  # Ranking tasks (item answers: generation and re-ranking) make up at least
  # this share of training examples; theirs are repeated where needed.
  c.min_ranking_fraction = 0.5
  c.max_history = 20  # items in a prompt's history (OpenP5: 20)
  # Padded prompt+answer lengths; longer prompts drop their oldest history
  # items to fit the largest bucket. One bucket = one compile.
  c.length_buckets = (128, 256, 384, 512)
  c.max_answer_tokens = 32  # answer tokens incl. EOS (longer text is cut)
  c.batch_size = 32  # global batch (divisible by data-parallel devices)
  c.ids_as_text = True  # write item/user ids as text before soft tokens
  c.soft_prompt = 8  # "text" variant: trainable soft-prompt vectors
  # "ilm" / "mlp": a shared trainable soft prompt beside the entity tokens
  # (beyond the paper, which has none; 0 = off).
  c.shared_prompt = 0
  c.mlp_hidden = 256  # "mlp" variant: hidden width
  # Soft tokens of each history / candidate item: the entity's K tokens
  # mean-pooled into this many (0 = all K), so long lists stay short (a
  # re-ranking prompt of 20 history items and 20 candidates fits 512).
  c.list_tokens = 2
  # The ``identify`` task shows its item by the entity's full soft tokens
  # ("entity") or by the pooled ones history and candidate items get
  # ("list"), grounding identifiers in what list prompts show.
  c.grounding_tokens = "entity"
  # Generative loss: "example" averages each prompt's answer tokens, then
  # the prompts, so short identifier answers count as much as long text;
  # "token" averages all answer tokens of a batch.
  c.answer_weighting = "example"
  # Identifier answers: cross-entropy over the tokens the item trie allows
  # after each prefix (the distribution ``eval.trie_softmax`` ranks by)
  # instead of over the whole vocabulary; text answers are unchanged.
  c.trie_loss = False
  c.rerank = rerank_config()
  # What is evaluated: "kind:task:split:templates" entries
  # (ilm_jax.eval.evaluations); results and reports keep this order.
  c.evaluations = full_evaluations()
  # Retrieval head (beyond the paper): in-batch softmax loss weight beside
  # the generative loss; > 0 adds the head and reports its full ranking.
  c.retrieval_weight = 0.0
  c.train = loop_config()
  c.train.num_steps = 5000
  c.train.warmup_steps = 200
  # Soft tokens are trained from scratch through a frozen LLM; 1e-3 learned
  # clearly faster than BLIP-2's 1e-4 in short CPU runs (README).
  c.train.learning_rate = 1e-3
  c.train.checkpoint_every = 500
  c.eval = ml_collections.ConfigDict()
  c.eval.num_beams = 10  # beams = length of the ranked list
  # The search never spells an item the user has seen, so each list holds
  # num_beams unseen items, as the full-ranking baselines' lists do (False:
  # seen items take beams and are dropped afterwards, as before this field).
  c.eval.exclude_seen = True
  # Each search step scores the digits the trie allows by a softmax over
  # them alone (True) or by the LLM's log-probabilities over its whole
  # vocabulary (False, the usual constrained beam search).
  c.eval.trie_softmax = False
  c.eval.max_users = -1  # held-out users evaluated (-1 = all)
  c.eval.batch_size = 32  # prompts per beam-search call
  c.eval.max_text_prompts = 200  # items / users per text task (-1 = all)
  c.eval.keep_examples = 5  # generated texts kept in results.json
  return c


def base_config() -> ml_collections.ConfigDict:
  """The accelerator-scale defaults of every experiment (``:full``)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # master seed: splits of randomness derive from it
  c.dataset = dataset_config()
  c.cf = cf_config()
  c.eval = ml_collections.ConfigDict()  # full-ranking baselines
  c.eval.ks = (5, 10)  # HR@k / NDCG@k cut-offs
  c.eval.splits = ("valid", "test")  # held-out splits to report
  c.eval.batch_size = 256  # users per full-ranking batch
  # Models of the "eval" stage's baseline table. SASRec trains there (in
  # ``workdir/sasrec``, its fields in ``c.sasrec``) and can then retrieve
  # candidates for re-ranking ("rerank:...:sasrec" evaluations).
  c.eval.baselines = BASELINES
  c.sasrec = sasrec_config(loop_config())
  c.qformer = qformer_config()
  c.stage1 = stage1_config()
  c.stage2 = stage2_config()
  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # devices on (data, fsdp, tensor); -1 = rest
  c.mesh.rules = MESH_RULES  # logical axis -> mesh axes
  return c


def cpu_budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The README main job's 2-core-CPU recipe, in place (``:cpu``).

  Full datasets and models (all users, SmolLM2-135M, MiniLM-initialised
  Q-Former) with budgets cut to about twenty minutes for the whole
  pipeline on latest-small, SASRec included: its 600 steps train in the eval
  stage and its top N is re-ranked beside ALS's. Stage 1 keeps the first
  two MiniLM layers and takes 120 steps of 16 rows. In stage 2 a step of 8
  prompts x 128 tokens takes 2-4 s on two cores
  (``launch/bench_stage2.py``), so training is ``CPU_STAGE2_STEPS`` steps
  of short prompts, most of them re-ranking.
  Re-ranking is evaluated for every test user on held-out templates;
  candidates are named by letters and listed items get one pooled soft
  token each, which keeps a prompt of 20 candidates under 112 tokens.
  Generation and the text tasks keep a sampled evaluation.
  """
  c.qformer.num_layers = 2  # first two MiniLM layers
  s1 = c.stage1
  s1.batch_size = 16  # rows per objective (in-batch negatives)
  s1.train.num_steps = 120  # about 3 minutes on 2 CPU cores
  s1.train.warmup_steps = 20
  s1.train.learning_rate = 3e-4  # measured to lift item-text recall on CPU
  s1.train.checkpoint_every = 100
  s2 = c.stage2
  s2.tasks = (P.RERANK, P.SEQUENTIAL, P.DESCRIPTION, P.PROFILE)
  s2.examples_per_task = 40  # per generative task; re-ranking has its own
  s2.max_history = 5
  # Soft-token prompts fit 112; text-only ones (identifiers written out)
  # need the second bucket.
  s2.length_buckets = (112, 224)
  s2.max_answer_tokens = 32
  s2.batch_size = 8
  s2.list_tokens = 1
  s2.answer_weighting = "token"  # as measured for the README's CPU figures
  s2.ids_as_text = False  # entities as soft tokens only: short prompts
  # A shared soft prompt lets a few steps set the task's behaviour.
  s2.shared_prompt = 8
  s2.train.num_steps = CPU_STAGE2_STEPS
  s2.train.learning_rate = 3e-3
  s2.train.warmup_steps = 10
  s2.train.checkpoint_every = 50
  s2.rerank.labels = "letters"
  s2.rerank.examples_per_task = 1000
  s2.eval.max_users = 24
  s2.eval.batch_size = 8
  s2.evaluations = TEST_EVALUATIONS
  s2.eval.max_text_prompts = 8
  return c


def small_budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few CPU minutes for the whole pipeline, in place (``:small``)."""
  cpu_budget(c)
  c.dataset.max_users = (
    min(c.dataset.max_users, 300) if c.dataset.max_users > 0 else 300
  )
  c.cf.dim = 32
  c.cf.sweeps = 5
  c.qformer.num_queries = 4
  c.qformer.max_text_length = 24
  c.stage1.train.num_steps = 30
  c.stage1.train.warmup_steps = 5
  # Two checkpoints per stage at its end (keep_checkpoints = 2), so a
  # damaged newest one falls back to the one before; on multiples of
  # log_every, so a run resumed there logs the same windows.
  c.stage1.train.checkpoint_every = 10
  s2 = c.stage2
  s2.examples_per_task = 200
  s2.length_buckets = (64, 128)
  s2.max_answer_tokens = 16
  s2.train.num_steps = 30
  s2.train.warmup_steps = 5
  s2.train.log_every = 5
  s2.train.checkpoint_every = 15
  s2.eval.max_users = 20
  s2.rerank.num_candidates = 10
  s2.rerank.train_holdout = 5
  s2.rerank.examples_per_task = 100
  s2.rerank.max_users = 40
  # SASRec and the re-ranking of its candidates are the CPU recipe's
  # slowest baseline; a few minutes' pipeline leaves them out.
  c.eval.baselines = ("popularity", "als")
  s2.evaluations = SMALL_EVALUATIONS
  c.sasrec.train.num_steps = 40
  c.sasrec.train.warmup_steps = 5
  c.sasrec.train.log_every = 10
  c.sasrec.train.checkpoint_every = 20  # two checkpoints, as above
  return c


def accel_budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """One accelerator host, minutes per experiment, in place (``:accel``).

  The recipe of ``launch/accelerator_run.py``: four stage-2 variants on two
  datasets meant to fit about 8 minutes on one H200 (an estimate, not yet
  timed on one: the run prints its wall times). The full model shapes and
  data (every user), the frozen LLM in bfloat16 (``llm_dtype`` "auto"),
  collaborative identifiers, the default stage 1 (600 steps of 32 rows,
  measured to align item text), 1,000 stage-2 steps of 32 prompts; evaluated
  on the test split with held-out templates, generation over the whole
  catalogue for every user (sequential and straightforward), re-ranking of
  ALS's and SASRec's candidates.
  """
  c.dataset.indexing = "collaborative"
  s2 = c.stage2
  s2.train.num_steps = 1000
  s2.train.warmup_steps = 100
  s2.train.checkpoint_every = 500
  # Straightforward recommendation names the user alone (no history, so no
  # identifiers written out): what only the user's soft tokens can carry.
  s2.evaluations = (*TEST_EVALUATIONS, "generate:straightforward:test:unseen")
  # Scoring each search step over the digits the trie allows lifted HR@10
  # of all four variants by .015-.018 on ML-100K (README, generation).
  s2.eval.trie_softmax = True
  return c


_BUDGETS = {
  "cpu": cpu_budget,
  "small": small_budget,
  "accel": accel_budget,
  "full": lambda c: c,
}


def parse_arg(arg: str) -> dict[str, str]:
  """``"small"`` or ``"dataset=ml-1m,budget=full"`` -> {field: value}.

  A bare word is the budget; the budget defaults to ``cpu``.
  """
  out = {"budget": "cpu"}
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, sep, value = part.partition("=")
    if not sep:
      key, value = "budget", key
    out[key.strip()] = value.strip()
  return out


def get_config(dataset: str, arg: str = "") -> ml_collections.ConfigDict:
  """The config of ``dataset`` under the budget ``arg`` names.

  Args:
    dataset: the dataset a config file stands for (``arg`` may override it
      with ``dataset=...``).
    arg: the text after ``:`` on the command line (``parse_arg``).

  Raises:
    ValueError: an unknown budget or key, naming the known ones.
  """
  fields = parse_arg(arg)
  unknown = set(fields) - {"budget", "dataset"}
  if unknown:
    raise ValueError(
      f"unknown config argument(s) {sorted(unknown)}; known: budget, dataset"
    )
  budget = fields["budget"]
  if budget not in _BUDGETS:
    raise ValueError(
      f"unknown config variant {budget!r}; known budgets: {BUDGETS}"
    )
  c = base_config()
  c.dataset.name = fields.get("dataset", dataset)
  return _BUDGETS[budget](c)
