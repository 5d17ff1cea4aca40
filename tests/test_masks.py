"""Masks under each overlap policy against masks drawn by hand (numpy slices)."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from trashseg.data.classes import IGNORE_INDEX
from trashseg.data.masks import SegObject, rasterize

H = W = 12


def square(x0, y0, x1, y1, midpoints=False):
    """Polygon of the pixel block rows y0..y1-1, cols x0..x1-1 (pycocotools' convention)."""
    if not midpoints:
        return [x0, y0, x1, y0, x1, y1, x0, y1]
    xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
    return [x0, y0, xm, y0, x1, y0, x1, ym, x1, y1, xm, y1, x0, y1, x0, ym]


def block(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def uncompressed_rle(m):
    """COCO's uncompressed RLE by hand: column-major run lengths, starting with zeros."""
    flat = m.flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


# Big Plastic (6) block and small Paper (2) block overlapping on rows/cols 4..7.
BIG, SMALL = (0, 0, 8, 8), (4, 4, 10, 10)


def expected(big_label, small_label, on_top):
    m = np.zeros((H, W), np.uint8)
    m[0:8, 0:8] = big_label
    m[4:10, 4:10] = small_label
    m[4:8, 4:8] = on_top
    return m


@pytest.mark.parametrize(
    "small_first_in_file, small_has_more_vertices, overlap, on_top",
    [
        # area_desc: the smaller object stays on top, whatever the file order or vertices.
        (True, True, "area_desc", 2),
        (False, False, "area_desc", 2),
        # baseline: ascending vertex count of the first polygon; later overwrites earlier.
        (True, True, "baseline", 2),
        (False, False, "baseline", 6),
        (True, False, "baseline", 6),
        # class_max: the higher label wins.
        (True, True, "class_max", 6),
        (False, False, "class_max", 6),
    ],
)
def test_two_overlapping_squares(small_first_in_file, small_has_more_vertices, overlap, on_top):
    big = SegObject(6, [square(*BIG, midpoints=not small_has_more_vertices)], False)
    small = SegObject(2, [square(*SMALL, midpoints=small_has_more_vertices)], False)
    objects = [small, big] if small_first_in_file else [big, small]
    np.testing.assert_array_equal(rasterize(objects, H, W, overlap), expected(6, 2, on_top))


def test_baseline_ties_keep_file_order():
    a, b = SegObject(6, [square(*BIG)], False), SegObject(2, [square(*SMALL)], False)
    np.testing.assert_array_equal(rasterize([a, b], H, W, "baseline"), expected(6, 2, 2))
    np.testing.assert_array_equal(rasterize([b, a], H, W, "baseline"), expected(6, 2, 6))


@pytest.mark.parametrize("overlap", ["area_desc", "baseline", "class_max"])
def test_two_part_object_and_degenerate_part(overlap):
    parts = [square(0, 0, 3, 3), [5, 5, 6, 6], square(7, 8, 11, 12)]  # the middle part has 2 points
    m = np.zeros((H, W), np.uint8)
    m[0:3, 0:3] = 4
    m[8:12, 7:11] = 4
    np.testing.assert_array_equal(rasterize([SegObject(4, parts, False)], H, W, overlap), m)


def test_rle_objects_compressed_and_uncompressed():
    ell = block(1, 1, 3, 9) | block(1, 7, 8, 9)  # an L shape
    bar = block(9, 0, 11, 12)
    compressed = mask_utils.encode(np.asfortranarray(ell))
    compressed["counts"] = compressed["counts"].decode()  # as stored in JSON
    objects = [SegObject(5, compressed, False), SegObject(10, uncompressed_rle(bar), False)]
    np.testing.assert_array_equal(rasterize(objects, H, W), ell * 5 + bar * 10)


def test_crowd_region_labelled_or_ignored():
    crowd = SegObject(1, uncompressed_rle(block(2, 2, 6, 6)), True)
    thing = SegObject(7, [square(4, 4, 8, 8)], False)
    labelled = rasterize([crowd, thing], H, W, "class_max", crowd="label")
    m = np.zeros((H, W), np.uint8)
    m[2:6, 2:6] = 1
    m[4:8, 4:8] = 7
    np.testing.assert_array_equal(labelled, m)
    ignored = rasterize([crowd, thing], H, W, "class_max", crowd="ignore")
    m[2:6, 2:6] = IGNORE_INDEX  # crowd goes on top under "ignore"
    np.testing.assert_array_equal(ignored, m)


def test_empty_image_and_unknown_policy():
    assert not rasterize([], H, W).any()
    with pytest.raises(ValueError, match="unknown overlap policy 'largest'"):
        from trashseg.data.masks import validate_policy

        validate_policy("largest", "label")
