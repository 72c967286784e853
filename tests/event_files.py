"""Reading TensorBoard event files back for the tests: the TFRecord framing (length,
its CRC, the record, its CRC) around tensorboardX's ``Event`` protos."""

import struct
from collections import defaultdict
from pathlib import Path


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every scalar in the event files of ``directory``."""
    from tensorboardX.proto import event_pb2

    found = defaultdict(list)
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                found[value.tag].append((event.step, value.simple_value))
    return dict(found)
