"""The step profile: HLO instructions, the wall-time sweep, a real trace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax import step_profile as sp


def _compiled(fn, *args):
  jitted = jax.jit(fn)
  return jitted, jitted.lower(*args).compile().as_text()


def _mlp_grad(x, w1, w2):
  def loss(w1, w2):
    return jnp.sum((jnp.tanh(x @ w1) @ w2) ** 2)

  return jax.grad(loss, argnums=(0, 1))(w1, w2)


def _inputs(n=128):
  r = np.random.default_rng(0)
  return tuple(
    jnp.asarray(r.normal(size=(n, n)), jnp.float32) for _ in range(3)
  )


def test_instructions_mark_matmuls_and_their_scope():
  _, text = _compiled(_mlp_grad, *_inputs())
  known = sp.instructions(text)
  matmuls = [i for i in known.values() if i.matmul]
  others = [i for i in known.values() if not i.matmul]
  # Forward x @ w1 and h @ w2; backward: the two weight gradients and the
  # gradient through w2 (five matmuls; XLA may merge some, not below 3).
  assert len(matmuls) >= 3
  assert others
  assert any("transpose(" in i.op_name for i in matmuls)
  assert any("dot_general" in i.op_name for i in matmuls)


def test_fusions_count_as_matmuls_through_their_computations():
  text = """HloModule m

%fused_dot (p0: f32[2,2], p1: f32[2,2]) -> f32[2,2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  %p1 = f32[2,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[2,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_add (p0: f32[2,2]) -> f32[2,2] {
  %p0 = f32[2,2]{1,0} parameter(0)
  ROOT %add.1 = f32[2,2]{1,0} add(%p0, %p0)
}

ENTRY %main (a: f32[2,2], b: f32[2,2]) -> f32[2,2] {
  %a = f32[2,2]{1,0} parameter(0)
  %b = f32[2,2]{1,0} parameter(1)
  %mm_fusion = f32[2,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(f)/jvp(Decoder)/dot_general"}
  %gemm = f32[2,2]{1,0} custom-call(%a, %b), custom_call_target="__cublas$gemm"
  ROOT %add_fusion = f32[2,2]{1,0} fusion(%mm_fusion), kind=kLoop, calls=%fused_add, metadata={op_name="jit(f)/transpose(jvp(Decoder))/add"}
}
"""  # noqa: E501
  known = sp.instructions(text)
  assert known["mm_fusion"].matmul
  assert known["mm_fusion"].op_name == "jit(f)/jvp(Decoder)/dot_general"
  assert known["gemm"].matmul
  assert not known["add_fusion"].matmul
  assert known["dot.1"].matmul and not known["add.1"].matmul


def test_breakdown_sweeps_overlaps_once_and_scopes_them():
  known = {
    "mm": sp.Instruction("fusion", "jit(f)/transpose(jvp(Decoder))/dot", True),
    "ew": sp.Instruction("fusion", "jit(f)/jvp(Encoder)/tanh", False),
    "opt": sp.Instruction("fusion", "jit(f)/adam/mul", False),
  }
  events = [
    sp.Event(0, 10, "mm"),  # matmul 0-10
    sp.Event(5, 20, "ew"),  # overlaps the matmul 5-10, alone 10-20
    sp.Event(30, 36, "opt"),  # after an idle gap 20-30
    sp.Event(100, 110, "mm"),  # second call: idle 36-100 between
  ]
  parts = (("llm", "Decoder"), ("encoder", "Encoder"))
  b = sp.breakdown(events, known, calls=2, parts=parts)
  s = {k: round(v * 1e9 * 2) for k, v in b.seconds.items()}
  assert s == {
    (sp.MATMUL, "backward llm"): 20,
    (sp.OTHER, "forward encoder"): 10,
    (sp.OTHER, "forward rest"): 6,
    (sp.IDLE, ""): 74,
  }
  assert b.wall == pytest.approx(110e-9 / 2)
  assert b.of_kind(sp.MATMUL) == pytest.approx(20e-9 / 2)
  assert [r["seconds"] for r in b.rows()] == sorted(
    (r["seconds"] for r in b.rows()), reverse=True
  )
  assert sum(r["share"] for r in b.rows()) == pytest.approx(1.0)


def test_breakdown_without_events_says_so():
  with pytest.raises(ValueError, match="no events of the profiled module"):
    sp.breakdown([], {}, calls=1)


def test_profile_of_a_real_gradient_finds_its_matmuls(tmp_path):
  args = _inputs(256)
  jitted, text = _compiled(_mlp_grad, *args)
  jax.block_until_ready(jitted(*args))
  b = sp.profile_calls(
    lambda: jitted(*args),
    text,
    calls=3,
    parts=(("mlp", "jit"),),
    logdir=str(tmp_path),
  )
  assert b.calls == 3
  assert b.of_kind(sp.MATMUL) > 0
  assert 0 < b.wall < 10.0
  scopes = {s for (k, s) in b.seconds if k == sp.MATMUL}
  assert scopes <= {"forward mlp", "backward mlp"}
  assert "backward mlp" in scopes
