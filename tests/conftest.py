"""Test set-up: 8 fake CPU devices so sharded code runs, and data paths."""

import os

# Must happen before jax initialises its backend (i.e. before any test imports
# jax and touches a device).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_configure(config):
  """XLA's persistent compilation cache for in-process tests: many tests
  compile the same tiny models again (every pipeline run builds its jitted
  functions anew), and a cache hit skips XLA's compile. Subprocesses that
  tests start are left as they are."""
  del config
  import tempfile

  import jax

  cache = (
    pathlib.Path(tempfile.gettempdir()) / f"ilm_jax_test_xla_{os.getuid()}"
  )
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _require(path: pathlib.Path) -> pathlib.Path:
  """Returns path, or skips (fails under CI) when ../shared is missing."""
  if path.exists():
    return path
  msg = (
    f"{path} not found: the real datasets are expected in ../shared/data "
    "beside the repository"
  )
  if os.environ.get("CI", "").lower() == "true":
    pytest.fail(msg + " (CI=true: a missing ../shared is a failure)")
  pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The directory holding the real datasets (../shared/data)."""
  return _require(SHARED_DATA)


@pytest.fixture
def toy_split():
  """A small leave-one-out split: 6 users, 12 items with titles and genres."""
  import numpy as np

  from ilm_jax.data.dataset import Catalog
  from ilm_jax.data.split import LeaveOneOutSplit

  num_users, num_items = 6, 12
  rng = np.random.default_rng(0)
  genres = [["Comedy", "Drama", "Horror|Comedy", ""][i % 4] for i in range(12)]
  catalog = Catalog(
    item_ids=np.array([str(i) for i in range(num_items)]),
    user_ids=np.array([str(u) for u in range(num_users)]),
    item_fields={
      "title": np.array([f"Film {i}" for i in range(num_items)]),
      "genres": np.array(genres),
    },
  )
  train = [
    rng.choice(num_items, size=4 + u, replace=False).astype(np.int32)
    for u in range(num_users)
  ]
  valid = rng.integers(0, num_items, num_users).astype(np.int32)
  test = rng.integers(0, num_items, num_users).astype(np.int32)
  return LeaveOneOutSplit("toy", catalog, train, valid, test, max_history=5)


def served_config(bert_dir):
  """The ``:small`` pipeline of the recommender, chat and notebook tests,
  reduced to about two CPU minutes on top of ``configs/default.py:small``.

  ``:small`` itself (MiniLM Q-Former, SmolLM2-135M, 300 users) took 410 s
  of CPU (user + system, ``/usr/bin/time``) for ``launch/train.py
  --config=configs/default.py:small`` on the suite's 2-core machine, far past
  the 2.5 minutes the suite can give it, so this keeps its recipe
  (re-ranking with lettered candidates, pooled list tokens, the shared soft
  prompt) and shrinks the data, the models and the steps: 24 users, a
  random 2-layer BERT of width 16 with MiniLM's tokenizer
  (``tests/tiny.py``), the tiny random LLM, 2 + 4 steps, one cheap
  evaluation.
  """
  from ilm_jax.experiment_config import get_config

  c = get_config("ml-latest-small", "small")
  c.dataset.max_users = 24
  c.cf.dim, c.cf.sweeps = 8, 2
  c.qformer.bert_path = str(bert_dir)
  c.qformer.num_queries = 2
  c.qformer.num_cf_tokens = 2
  c.qformer.embed_dim = 8
  c.qformer.max_text_length = 12
  c.stage1.batch_size = 8
  c.stage1.train.num_steps = 2
  c.stage1.train.warmup_steps = 1
  c.stage1.train.checkpoint_every = 2
  c.stage1.train.log_every = 1
  c.stage1.train.progress_bar = False
  c.stage1.eval.batch_size = 64
  c.stage1.eval.candidates = 10
  s = c.stage2
  s.llm = "tiny"
  s.examples_per_task = 8
  s.length_buckets = (256,)  # character tokens: prompts are long
  s.max_answer_tokens = 12
  s.train.num_steps = 4
  s.train.log_every = 2
  s.train.checkpoint_every = 4
  s.train.progress_bar = False
  s.rerank.examples_per_task = 16
  s.rerank.max_users = 4
  s.rerank.batch_size = 4
  s.eval.batch_size = 4
  s.evaluations = ("rerank:rerank:valid:seen",)
  return c


@pytest.fixture(scope="session")
def served_workdir(tmp_path_factory):
  """A workdir the reduced ``:small`` pipeline (``served_config``) trained
  once for the whole run: cf, stage1 and stage2 (the baselines stage is not
  what these tests are about). About 130 s of CPU, most of it compiling
  the two training steps.

  Under ``pytest -n`` every worker has its own session, so the workers
  share one directory of the run and a lock: the first to get there
  trains, the others wait and reuse it.
  """
  import fcntl

  from ilm_jax.pipeline import run as pipeline
  from tests.tiny import tiny_bert_dir

  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's directory, above each worker's own
  root = root / "served"
  root.mkdir(exist_ok=True)
  workdir = root / "work"
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
    if not (root / "trained").exists():
      config = served_config(tiny_bert_dir(root / "bert"))
      for stage in ("cf", "stage1", "stage2"):
        pipeline.run(config, workdir, stage)
      (root / "trained").write_text("cf, stage1, stage2\n")
  return workdir
