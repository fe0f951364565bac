"""OpenCV's HOG people detector on chosen frames of a video: an independent reference.

OpenCV 5 (the project's opencv-python-headless) no longer ships ``HOGDescriptor``; this
helper runs under the system interpreter with Debian's ``python3-opencv`` (4.x), on its
own, so it imports nothing from the project. Usage::

    /usr/bin/python3 bench/_hog_reference.py VIDEO [--scale S] FRAME [FRAME ...]

Prints one JSON list per frame given (x1, y1, x2, y2 boxes), on the frame upscaled 1.5x
(the default 64x128 window is taller than vtest's far people), suppressed at IoU 0.4.
``--scale``: each frame is first resized by S (as ``python -m bench perception --scale``
does), and the boxes are in the resized frame's pixels.
"""

import json
import sys

import cv2
import numpy as np


def main() -> int:
    video, rest = sys.argv[1], sys.argv[2:]
    scale = 1.0
    if rest[:1] == ["--scale"]:
        scale, rest = float(rest[1]), rest[2:]
    frames = [int(f) for f in rest]
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    cap = cv2.VideoCapture(video)
    out = []
    for index in frames:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = cap.read()
        if not ok:
            print(f"cannot read frame {index} of {video}", file=sys.stderr)
            return 1
        if scale != 1.0:
            h, w = image.shape[:2]
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            shrink = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            image = cv2.resize(image, size, interpolation=shrink)
        big = cv2.resize(image, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR)
        rects, weights = hog.detectMultiScale(big, winStride=(8, 8), padding=(8, 8), scale=1.05)
        boxes = [[x / 1.5, y / 1.5, (x + w) / 1.5, (y + h) / 1.5] for x, y, w, h in rects]
        if boxes:
            scores = [float(s) for s in np.ravel(weights)]
            xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]
            keep = np.ravel(cv2.dnn.NMSBoxes(xywh, scores, 0.3, 0.4))
            boxes = [boxes[int(i)] for i in keep]
        out.append(boxes)
    cap.release()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
