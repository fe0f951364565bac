"""Results as JSON-ready dicts."""

from __future__ import annotations

import json

from edgefed.models.types import (
    Classification,
    Detection,
    Landmarks,
    Result,
    TextBox,
    result_to_dict,
)


def test_every_result_type_becomes_plain_rounded_json() -> None:
    results: list[Result] = [
        Detection("person", 0.876543, (1.04, 2.06, 3.0, 4.0), ((5.55, 6.0),)),
        Detection("car", 0.5, (0, 0, 1, 1)),
        Landmarks((0, 0, 10, 10), 0.999999, ((1.26, 2.0, -0.33, 0.123456),)),
        Classification((("soccer ball", 0.61119),), None),
        Classification((("dog", 0.5),), (0.0, 0.0, 5.0, 5.0)),
        TextBox((1, 2, 3, 4), 0.7, ((1.0, 2.0), (3.0, 2.0), (3.0, 4.0), (1.0, 4.0))),
    ]
    dicts = json.loads(json.dumps([result_to_dict(r) for r in results]))
    assert dicts == [
        {
            "type": "detection",
            "label": "person",
            "score": 0.8765,
            "box": [1.0, 2.1, 3.0, 4.0],
            "keypoints": [[5.5, 6.0]],
        },
        {"type": "detection", "label": "car", "score": 0.5, "box": [0.0, 0.0, 1.0, 1.0]},
        {
            "type": "landmarks",
            "box": [0.0, 0.0, 10.0, 10.0],
            "presence": 1.0,
            "points": [[1.3, 2.0, -0.3, 0.1235]],
        },
        {"type": "classification", "top": [["soccer ball", 0.6112]], "box": None},
        {"type": "classification", "top": [["dog", 0.5]], "box": [0.0, 0.0, 5.0, 5.0]},
        {
            "type": "text",
            "box": [1.0, 2.0, 3.0, 4.0],
            "score": 0.7,
            "polygon": [[1.0, 2.0], [3.0, 2.0], [3.0, 4.0], [1.0, 4.0]],
        },
    ]
