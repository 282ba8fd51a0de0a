"""Time-ordered job ids and the packed id buffer a bulk run publishes from."""

import time
import uuid

from jobs.ids import IdBuffer, new_id


def test_new_ids_are_version_7_unique_and_ordered_by_time() -> None:
    first = [new_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_id()
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in first)
    assert len(set(first)) == 1000
    assert max(first).int >> 80 < later.int >> 80  # the millisecond prefix moved on
    assert abs((later.int >> 80) - time.time_ns() // 1_000_000) < 1000


def test_id_buffer_gives_back_every_id_in_order_and_in_chunks() -> None:
    ids = [uuid.uuid4() for _ in range(1001)]
    buffer = IdBuffer()
    for i in ids:
        buffer.append(i)
    chunks = list(buffer.chunks(256))
    assert len(buffer) == 1001
    assert [len(c) for c in chunks] == [256, 256, 256, 233]
    assert [i for c in chunks for i in c] == ids
    assert list(IdBuffer().chunks(10)) == []
