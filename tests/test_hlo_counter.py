"""ssl_jax/hlo.py's HBM counter on small handwritten HLO: each rule charges what the chip moves."""

import pytest

from ssl_jax import hlo

# A scanned stack of 12 saved layer inputs f32[12,1024] (48 KiB) in a loop of 12: each iteration
# reads one layer's row through a fused dynamic-slice and writes one through a fused
# dynamic-update-slice, in place.
STACK = '''HloModule m

%fused_read (p0: f32[12,1024], p1: s32[], p2: f32[1024]) -> f32[1024] {
  %p0 = f32[12,1024]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %p2 = f32[1024]{0} parameter(2)
  %z = s32[] constant(0)
  %ds = f32[1,1024]{1,0} dynamic-slice(%p0, %p1, %z), dynamic_slice_sizes={1,1024}
  %row = f32[1024]{0} bitcast(%ds)
  ROOT %add = f32[1024]{0} add(%row, %p2)
}

%fused_write (p0: f32[12,1024], p1: f32[1024], p2: s32[]) -> f32[12,1024] {
  %p0 = f32[12,1024]{1,0} parameter(0)
  %p1 = f32[1024]{0} parameter(1)
  %p2 = s32[] parameter(2)
  %z = s32[] constant(0)
  %neg = f32[1024]{0} negate(%p1)
  %update = f32[1,1024]{1,0} bitcast(%neg)
  ROOT %dus = f32[12,1024]{1,0} dynamic-update-slice(%p0, %update, %p2, %z)
}

%cond (c: (s32[], f32[12,1024], f32[1024])) -> pred[] {
  %c = (s32[], f32[12,1024], f32[1024]) parameter(0)
  %n = s32[] constant(12)
  %i = s32[] get-tuple-element(%c), index=0
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (b: (s32[], f32[12,1024], f32[1024])) -> (s32[], f32[12,1024], f32[1024]) {
  %b = (s32[], f32[12,1024], f32[1024]) parameter(0)
  %i = s32[] get-tuple-element(%b), index=0
  %stack = f32[12,1024]{1,0} get-tuple-element(%b), index=1
  %x = f32[1024]{0} get-tuple-element(%b), index=2
  %y = f32[1024]{0} fusion(%stack, %i, %x), kind=kLoop, calls=%fused_read
  %stack2 = f32[12,1024]{1,0} fusion(%stack, %y, %i), kind=kLoop, calls=%fused_write
  ROOT %t = (s32[], f32[12,1024], f32[1024]) tuple(%i, %stack2, %y)
}

ENTRY %main (a: (s32[], f32[12,1024], f32[1024])) -> (s32[], f32[12,1024], f32[1024]) {
  %a = (s32[], f32[12,1024], f32[1024]) parameter(0)
  ROOT %w = (s32[], f32[12,1024], f32[1024]) while(%a), condition=%cond, body=%body
}
'''


def test_fused_dynamic_slice_and_update_are_charged_their_slice():
  got = hlo.costs(STACK)
  row, stack, index = 1024 * 4, 12 * 1024 * 4, 4
  read = row + index + row + row            # the slice read, the index, x, y written
  write = 0 + row + index + row             # the stack updated in place: the new row read, the row written
  assert got['hbm_bytes'] == 12 * (read + write)
  # The count before: every operand and result whole, the whole stack twice a fusion.
  assert got['hbm_bytes_whole_operands'] == 12 * ((stack + index + row + row) + (stack + row + index + stack))
  assert got['on_chip_bytes'] == 0


def test_a_slice_read_alongside_a_whole_read_is_charged_whole():
  both = STACK.replace('ROOT %add = f32[1024]{0} add(%row, %p2)',
                       '%sum = f32[1024]{0} reduce(%p0, %z), dimensions={0}, to_apply=%cond\n'
                       '  ROOT %add = f32[1024]{0} add(%row, %sum)')
  got = hlo.costs(both)
  row, stack, index = 1024 * 4, 12 * 1024 * 4, 4
  assert got['hbm_bytes'] == 12 * ((stack + index + row + row) + (row + index + row))


GATHER = '''HloModule m

%fused_gather (p0: f32[64,1000], p1: s32[64,1]) -> f32[64] {
  %p0 = f32[64,1000]{1,0} parameter(0)
  %p1 = s32[64,1]{1,0} parameter(1)
  %g = f32[64,1]{1,0} gather(%p0, %p1), offset_dims={}, collapsed_slice_dims={1}, start_index_map={1}, index_vector_dim=1, slice_sizes={1,1}
  %b = f32[64]{0} bitcast(%g)
  ROOT %neg = f32[64]{0} negate(%b)
}

ENTRY %main (logits: f32[64,1000], labels: s32[64,1], table: bf16[500,32], ids: s32[16,1]) -> f32[64] {
  %logits = f32[64,1000]{1,0} parameter(0)
  %labels = s32[64,1]{1,0} parameter(1)
  %table = bf16[500,32]{1,0} parameter(2)
  %ids = s32[16,1]{1,0} parameter(3)
  %rows = bf16[16,32]{1,0} gather(%table, %ids), offset_dims={1}, collapsed_slice_dims={0}, start_index_map={0}, index_vector_dim=1, slice_sizes={1,32}
  ROOT %nll = f32[64]{0} fusion(%logits, %labels), kind=kLoop, calls=%fused_gather
}
'''


def test_a_gather_is_charged_the_rows_it_reads():
  got = hlo.costs(GATHER)
  labels_fusion = 64 * 4 + 64 * 4 + 64 * 4       # one logit a row, the labels, the result
  embedding = 16 * 32 * 2 + 16 * 4 + 16 * 32 * 2   # 16 rows read, the ids, the rows written
  assert got['hbm_bytes'] == labels_fusion + embedding
  assert got['hbm_bytes_whole_operands'] == (64 * 1000 * 4 + 64 * 4 + 64 * 4) + (500 * 32 * 2 + 16 * 4 + 16 * 32 * 2)


ON_CHIP = '''HloModule m

%fused_scale (p0: f32[256], p1: f32[4096,256]) -> f32[4096,256] {
  %p0 = f32[256]{0:T(256)S(1)} parameter(0)
  %p1 = f32[4096,256]{1,0:T(8,128)} parameter(1)
  %b = f32[4096,256]{1,0:T(8,128)} broadcast(%p0), dimensions={1}
  ROOT %m = f32[4096,256]{1,0:T(8,128)} multiply(%p1, %b)
}

ENTRY %main (scale: f32[256], x: f32[4096,256]) -> f32[4096,256] {
  %scale = f32[256]{0:T(256)} parameter(0)
  %x = f32[4096,256]{1,0:T(8,128)} parameter(1)
  %cs = (f32[256]{0:T(256)S(1)}, f32[256]{0:T(256)}, u32[]{:S(2)}) copy-start(%scale)
  %vmem = f32[256]{0:T(256)S(1)} copy-done(%cs)
  ROOT %y = f32[4096,256]{1,0:T(8,128)} fusion(%vmem, %x), kind=kLoop, calls=%fused_scale
}
'''


def test_copies_into_on_chip_memory_are_counted_apart_from_hbm():
  got = hlo.costs(ON_CHIP)
  vector, matrix = 256 * 4, 4096 * 256 * 4
  # The prefetch reads the vector from HBM once and writes it to VMEM; the fusion reads it from VMEM.
  assert got['hbm_bytes'] == vector + 2 * matrix
  assert got['on_chip_bytes'] == vector + vector
  # Before: the copy's tuple (both buffers and its flag) and its operand, and the fusion's VMEM operand, as HBM.
  assert got['hbm_bytes_whole_operands'] == (vector + vector + 4 + vector) + (vector + 2 * matrix)


def test_top_level_slices_and_scatter_move_their_slice():
  text = '''HloModule m

ENTRY %main (t: f32[100,8], i: s32[], u: f32[3,8], idx: s32[3,1]) -> f32[100,8] {
  %t = f32[100,8]{1,0} parameter(0)
  %i = s32[] parameter(1)
  %u = f32[3,8]{1,0} parameter(2)
  %idx = s32[3,1]{1,0} parameter(3)
  %z = s32[] constant(0)
  %ds = f32[2,8]{1,0} dynamic-slice(%t, %i, %z), dynamic_slice_sizes={2,8}
  %dus = f32[100,8]{1,0} dynamic-update-slice(%t, %ds, %i, %z)
  ROOT %sc = f32[100,8]{1,0} scatter(%dus, %idx, %u), update_window_dims={1}, inserted_window_dims={0}, scatter_dims_to_operand_dims={0}, index_vector_dim=1, to_apply=%add
}
'''
  got = hlo.costs(text)
  slice_, update = 2 * 8 * 4, 3 * 8 * 4
  dynamic_slice = slice_ + 4 + 4 + slice_            # read the slice and two indices, write it
  dynamic_update = 0 + slice_ + 4 + 4 + slice_       # in place: the update read, its rows written
  scatter = update + 3 * 4 + update + update         # the rows added to read, indices, updates; rows written
  assert got['hbm_bytes'] == dynamic_slice + dynamic_update + scatter


def test_a_loop_of_unknown_length_is_counted_once():
  """A while loop with no known_trip_count whose condition compares with no constant (a
  length computed at run time): its body is counted once, not dropped and not guessed."""
  text = '''HloModule m

%cond (c: (s32[], s32[], f32[8])) -> pred[] {
  %c = (s32[], s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%c), index=0
  %n = s32[] get-tuple-element(%c), index=1
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (b: (s32[], s32[], f32[8])) -> (s32[], s32[], f32[8]) {
  %b = (s32[], s32[], f32[8]) parameter(0)
  %x = f32[8]{0} get-tuple-element(%b), index=2
  %ar = f32[8]{0} all-reduce(%x), replica_groups={}, to_apply=%add
  %d = f32[8,8]{1,0} dot(%x, %x), lhs_contracting_dims={}, rhs_contracting_dims={}
  %i = s32[] get-tuple-element(%b), index=0
  %n = s32[] get-tuple-element(%b), index=1
  ROOT %t = (s32[], s32[], f32[8]) tuple(%i, %n, %ar)
}

ENTRY %main (a: (s32[], s32[], f32[8])) -> (s32[], s32[], f32[8]) {
  %a = (s32[], s32[], f32[8]) parameter(0)
  ROOT %w = (s32[], s32[], f32[8]) while(%a), condition=%cond, body=%body
}
'''
  computations = hlo.parse(text)
  loop = computations['main']['instructions'][-1]
  assert loop.opcode == 'while' and hlo.trip_count(loop, computations) == 1
  got = hlo.costs(text)
  assert got['collective_bytes']['all-reduce'] == 32
  assert got['flops'] == 2 * 64
  assert got['hbm_bytes'] == (32 + 32) + (32 + 32 + 256)      # the all-reduce's and the dot's operands and results


@pytest.mark.parametrize('text, hbm, on_chip', [('f32[4,8]{1,0}', 128, 0), ('bf16[4]{0:T(256)S(1)}', 0, 8),
                                                ('(f32[2]{0}, s32[]{:T(128)S(6)})', 8, 4), ('pred[3]', 3, 0)])
def test_split_bytes_reads_the_memory_space(text, hbm, on_chip):
  assert hlo.split_bytes(text) == (hbm, on_chip)


def test_an_all_reduce_sliced_by_partition_is_a_reduce_scatter():
  """XLA:TPU writes a reduce-scatter as a fusion of an all-reduce and a dynamic-slice at the
  device's partition id: counted as a reduce-scatter of the shard each device keeps."""
  text = '''HloModule m

%all-reduce-scatter (input: bf16[768,3072]) -> bf16[192,3072] {
  %input = bf16[768,3072]{1,0} parameter(0)
  %ar = bf16[768,3072]{1,0} all-reduce(%input), replica_groups={{0,1,2,3}}, to_apply=%add
  %pid = u32[] partition-id()
  %rows = u32[] constant(192)
  %start = u32[] multiply(%pid, %rows)
  %zero = u32[] constant(0)
  ROOT %ds = bf16[192,3072]{1,0} dynamic-slice(%ar, %start, %zero), dynamic_slice_sizes={192,3072}
}

ENTRY %main (g: bf16[768,3072], b: f32[768]) -> (bf16[192,3072], f32[768]) {
  %g = bf16[768,3072]{1,0} parameter(0)
  %b = f32[768]{0} parameter(1)
  %shard = bf16[192,3072]{1,0} fusion(%g), kind=kCustom, calls=%all-reduce-scatter
  %whole = f32[768]{0} all-reduce(%b), replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %t = (bf16[192,3072], f32[768]) tuple(%shard, %whole)
}
'''
  got = hlo.costs(text)['collective_bytes']
  assert got['reduce-scatter'] == 192 * 3072 * 2 and got['all-reduce'] == 768 * 4


def test_an_accumulator_row_read_and_written_back_in_place_moves_the_row():
  """A scanned gradient accumulator: the layer's row of f32[12,1024] read by a dynamic-slice,
  added to, and written back by a dynamic-update-slice in the same fusion."""
  text = '''HloModule m

%accumulate (p0: f32[12,1024], p1: f32[1024], p2: s32[]) -> f32[12,1024] {
  %p0 = f32[12,1024]{1,0} parameter(0)
  %p1 = f32[1024]{0} parameter(1)
  %p2 = s32[] parameter(2)
  %z = s32[] constant(0)
  %row = f32[1,1024]{1,0} dynamic-slice(%p0, %p2, %z), dynamic_slice_sizes={1,1024}
  %g = f32[1,1024]{1,0} bitcast(%p1)
  %sum = f32[1,1024]{1,0} add(%row, %g)
  ROOT %dus = f32[12,1024]{1,0} dynamic-update-slice(%p0, %sum, %p2, %z)
}

ENTRY %main (acc: f32[12,1024], g: f32[1024], i: s32[]) -> f32[12,1024] {
  %acc = f32[12,1024]{1,0} parameter(0)
  %g = f32[1024]{0} parameter(1)
  %i = s32[] parameter(2)
  ROOT %f = f32[12,1024]{1,0} fusion(%acc, %g, %i), kind=kLoop, calls=%accumulate
}
'''
  row = 1024 * 4
  assert hlo.costs(text)['hbm_bytes'] == row + row + 4 + row     # the row read, the gradient, the index; the row written
