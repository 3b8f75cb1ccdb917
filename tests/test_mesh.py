"""Host values to global arrays on the 8 fake devices."""

import jax
import numpy as np

from ilm_jax.sharding import mesh as mesh_lib


def test_host_to_global_fills_each_device_with_its_slice():
  mesh = mesh_lib.make_mesh((2, 4, 1))
  value = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  sharding = mesh_lib.batch_sharding(mesh, 2)
  out = mesh_lib.host_to_global(value, sharding)
  assert out.sharding == sharding
  np.testing.assert_array_equal(np.asarray(out), value)
  for shard in out.addressable_shards:
    # the batch axis is split 8 ways over (data, fsdp): one row per device
    assert shard.data.shape == (1, 3)
    np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index])
  scalar = mesh_lib.host_to_global(np.int32(7), mesh_lib.replicated(mesh))
  assert scalar.shape == () and int(scalar) == 7
  assert len(scalar.addressable_shards) == len(jax.devices())
