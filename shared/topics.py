"""Topic names: the only place they are spelled (docs/architecture.md §3)."""

from typing import Final

EXAMPLES: Final = "ctrain.examples"
EXAMPLES_DLQ: Final = "ctrain.examples.dlq"
WINDOWS: Final = "ctrain.windows"
WINDOWS_DLQ: Final = "ctrain.windows.dlq"
VALIDATIONS: Final = "ctrain.validations"
TRAINING: Final = "ctrain.training"
CANDIDATES: Final = "ctrain.candidates"
PROMOTIONS: Final = "ctrain.promotions"
# Delayed ground truth written by clients: {example_id, label, event_time}.
LABELS: Final = "ctrain.labels"
# WindowScored: the serving model's quality on each window (monitor).
QUALITY: Final = "ctrain.quality"
# Events a consumer could not handle (validations, candidates, promotions), with why.
EVENTS_DLQ: Final = "ctrain.events.dlq"
# One record written when a dev stack creates its topics: a service that saw it and no
# longer does knows the broker lost its data (the embedded broker keeps it in memory).
EPOCH: Final = "ctrain.epoch"

# A record on an examples topic with this header is a watermark, not an example: the
# header's value is an event time in ms (every later record of the partition is at least that
# late), or END_OF_INPUT (the producer sent all it has: close what is open now).
WATERMARK_HEADER: Final = "ctrain-watermark"
END_OF_INPUT: Final = b"end"


def stream_topic(stream: str) -> str:
    """The default topic of a stream declared in the configuration file."""
    return f"{EXAMPLES}.{stream}"


ALL: Final = (
    EXAMPLES,
    EXAMPLES_DLQ,
    WINDOWS,
    WINDOWS_DLQ,
    VALIDATIONS,
    TRAINING,
    CANDIDATES,
    PROMOTIONS,
    EVENTS_DLQ,
    LABELS,
    QUALITY,
)
