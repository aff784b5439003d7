"""transforms.packing: shuffle payloads round-trip exactly and are smaller than pickles."""

import pickle

from tests import test_transforms_label as label_test
from transforms import packing
from tests import beam_testing as testing
from transforms import parse


def test_bytes_lists_round_trip():
  for items in ([], [b""], [b"a", b"", b"\x00" * 3, "é".encode() * 1000]):
    assert packing.unpack_bytes_list(packing.pack_bytes_list(items)) == items


def test_parsed_batches_round_trip():
  records = [testing.impression(i, testing.START + i) for i in range(200)]
  records.append(testing.impression(200, testing.START, device=None, item_price=None,
                                    tags=None, tags__weight=None))
  batch = label_test._parse(  # pylint: disable=protected-access
      parse.ImpressionParser(testing.small_spec()), records, "imps.jsonl")
  assert batch.num_rows == 201 and batch.column(batch.schema.get_field_index("device")
                                                ).null_count == 1
  for part in (batch, batch.slice(7, 50), batch.slice(0, 0)):
    unpacked = packing.unpack_batch(packing.pack_batch(part))
    assert unpacked.schema == part.schema and unpacked.equals(part)
  assert len(packing.pack_batch(batch)) < len(pickle.dumps(batch)) / 2
