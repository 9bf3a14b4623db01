"""Connected components over confirmed duplicate pairs, vectorised.

A streaming first-seen filter (keep a record unless it resembles one already kept) depends on the
input order and is not transitive. Components are neither: A~B and B~C put A, B and C in one
cluster whatever the order. Labels are computed by repeated hooking (each edge pulls the larger
root under the smaller) and pointer jumping, all in numpy, so millions of edges take seconds.
"""

from __future__ import annotations

import numpy as np


def component_labels(n_nodes: int, edges: np.ndarray) -> np.ndarray:
    """A label per node (int64); two nodes share a label iff a path of ``edges`` joins them.

    The label of a component is its smallest node index, so it is canonical for a given numbering.
    """
    labels = np.arange(n_nodes, dtype=np.int64)
    if len(edges) == 0:
        return labels
    left, right = edges[:, 0], edges[:, 1]
    while True:
        a, b = labels[left], labels[right]
        differ = a != b
        if not differ.any():
            return labels
        low, high = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
        np.minimum.at(labels, high, low)
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
