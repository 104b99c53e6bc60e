"""models/anomaly: the reference-based anomaly signal (PatchCore-like) beside the prompted detector.

features.py (patch features of the pretrained backbone), coreset.py (greedy k-center order),
memory.py (bounded memory, nearest-neighbour distance, leave-one-out calibration), scoring.py
(pixel map, image score, regions), registration.py (the offline reference job). The service side
is service/anomaly.py; the store side prompt_store/reference_store.py.
"""
