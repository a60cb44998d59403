"""PFENet augmentation and test-time resize (model/fss/transforms.py): known answers."""
import numpy as np
import pytest
import torch

from model.fss import transforms as T
from model.fss.metrics import upsample_logits


def test_binarize_keeps_ignore_and_zeroes_other_classes():
    m = np.array([[0, 3, 5], [255, 5, 7]], np.uint8)
    assert T.binarize(m, 5).tolist() == [[0, 0, 1], [255, 1, 0]]


@pytest.mark.parametrize("seed", range(20))
def test_crop_keeps_85_percent_of_the_foreground(seed):
    label = np.zeros((120, 120), np.uint8)
    label[70:100, 10:40] = 1  # 900 px, fits in a 60 x 60 crop
    image = np.zeros((120, 120, 3), np.float32)
    rng = np.random.default_rng(seed)
    img, lab = T.rand_crop(image, label, rng, size=60)
    assert img.shape == (60, 60, 3) and lab.shape == (60, 60)
    assert (lab == 1).sum() >= 0.85 * 900


def test_crop_pads_with_mean_and_ignore():
    image = np.zeros((10, 10, 3), np.float32)
    label = np.ones((10, 10), np.uint8)
    img, lab = T.rand_crop(image, label, np.random.default_rng(0), size=17)
    assert lab.shape == (17, 17) and (lab == 1).sum() == 100  # all foreground kept
    assert (lab == 255).sum() == 17 * 17 - 100
    np.testing.assert_allclose(img[lab == 255][0], T.MEAN)
    # pad split evenly: 7 -> 3 before, 4 after
    assert lab[3, 3] == 1 and lab[2, 3] == 255 and lab[12, 12] == 1 and lab[13, 12] == 255


def test_rotation_borders_and_direction():
    image = np.zeros((9, 9, 3), np.float32)
    label = np.zeros((9, 9), np.uint8)
    label[0, 4] = 1  # top middle
    img, lab = T.rotate(image, label, 90.0)
    # cv2.getRotationMatrix2D about (w/2, h/2): +90 degrees turns counter-clockwise,
    # the top-middle pixel (x 4, y 0) lands at (x 0, y 5)
    assert lab[5, 0] == 1 and lab.sum() - lab[lab == 255].sum() == 1
    img, lab = T.rotate(np.zeros((20, 30, 3), np.float32), np.zeros((20, 30), np.uint8), 10.0)
    assert lab[0, 0] == 255 and lab[10, 15] == 0  # corner from outside, centre kept
    np.testing.assert_allclose(img[0, 0], T.MEAN, atol=1e-3)
    same_img, same_lab = T.rotate(image, label, 0.0)
    assert np.array_equal(same_lab, label)


def test_blur_is_opencv_5x5_kernel():
    img = np.zeros((9, 9, 1), np.float32)
    img[4, 4, 0] = 256
    out = T.gaussian_blur(img)[..., 0]
    k = np.array([1, 4, 6, 4, 1]) / 16 * 16  # 256 * outer(k, k) / 256
    np.testing.assert_allclose(out[2:7, 2:7], np.outer(k, k))
    assert out.sum() == pytest.approx(256)


def test_train_transform_shapes_and_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (70, 90, 3)).astype(np.uint8)
    label = np.zeros((70, 90), np.uint8)
    label[20:50, 30:60] = 1
    label[:, :3] = 255
    x, y = T.train_transform(image, label, rng, crop=65, scale=(0.9, 1.1))
    assert x.shape == (3, 65, 65) and x.dtype == np.float32 and y.shape == (65, 65)
    assert set(np.unique(y)) <= {0, 1, 255}


def _cv2_resize_fx(src, fx, *, nearest=False):
    """``cv2.resize(src, None, fx=fx, fy=fx, interpolation=INTER_LINEAR | INTER_NEAREST)``
    re-implemented pixel by pixel from OpenCV's imgproc/src/resize.cpp (float32 input, as
    PFENet's images): dsize = round(side * fx); same size -> copy; linear: source coordinate
    (float)((d + 0.5) / fx - 0.5), floor, clamped to the edge pixel with weight 0; nearest
    (resizeNN): floor(d * (1 / fx)), at most the last pixel."""
    h, w = src.shape[:2]
    dh, dw = int(round(h * fx)), int(round(w * fx))
    if (dh, dw) == (h, w):
        return src.copy()

    def taps(n_out, n_in):
        out = []
        for d in range(n_out):
            if nearest:
                out.append(((min(int(np.floor(d * (1.0 / fx))), n_in - 1), 1.0),))
                continue
            f = float(np.float32((d + 0.5) * (1.0 / fx) - 0.5))
            s = int(np.floor(f))
            f -= s
            if s < 0:
                f, s = 0.0, 0
            if s >= n_in - 1:
                f, s = 0.0, n_in - 1
            out.append(((s, 1.0 - f), (min(s + 1, n_in - 1), f)))
        return out

    rows, cols = taps(dh, h), taps(dw, w)
    dst = np.zeros((dh, dw) + src.shape[2:], np.float64)
    for y, ry in enumerate(rows):
        for x, rx in enumerate(cols):
            dst[y, x] = sum(wy * wx * src[sy, sx].astype(np.float64) for sy, wy in ry for sx, wx in rx)
    return dst


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rand_scale_samples_like_cv2_fx(seed):
    """RandScale is ``cv2.resize(fx=s)``: the output side round(side * s) and, unlike a
    resize to that size, the source sampled every 1 / s pixels (issue 18 §5)."""
    rng = np.random.default_rng(seed)
    image = rng.random((23, 37, 3)).astype(np.float32) * 255
    label = rng.integers(0, 3, (23, 37)).astype(np.uint8)
    s = 0.8 + (1.25 - 0.8) * np.random.default_rng(seed).random()  # the draw rand_scale makes
    img, lab = T.rand_scale(image, label, np.random.default_rng(seed), scale=(0.8, 1.25))
    want = _cv2_resize_fx(image, s)
    assert img.shape == want.shape
    np.testing.assert_allclose(img, want, atol=2e-3)
    np.testing.assert_array_equal(lab, _cv2_resize_fx(label, s, nearest=True).astype(np.uint8))
    if img.shape[:2] != image.shape[:2] and abs(img.shape[1] / 37 - s) > 1e-3:
        # the size-ratio sampling it replaced is measurably different
        assert np.abs(T.resize_bilinear(image, img.shape[:2]) - want).max() > 0.05


def test_test_resize_pad_and_back_to_the_original_label():
    label = np.zeros((360, 480), np.uint8)
    label[100:300, 50:200] = 1
    label[:, -5:] = 255
    image = np.zeros((360, 480, 3), np.uint8)
    x, y = T.test_transform(image, label, size=129)
    assert T.test_size(360, 480, 129) == (96, 128)  # long side 129, floored to x8
    assert x.shape == (3, 129, 129) and (y[96:] == 255).all() and (y[:, 128:] == 255).all()
    np.testing.assert_allclose(x[:, -1, -1], -T.MEAN / T.STD, rtol=1e-6)  # pad 0 before normalising
    # a perfect prediction at the input size scores ~1 after mapping back to 360 x 480
    fg = torch.from_numpy((y == 1).astype(np.float32))
    logits = torch.stack([1 - fg, fg])[None]  # 1 x 2 x 129 x 129
    pred = upsample_logits(logits, (360, 480)).numpy()
    valid = label != 255
    inter = ((pred == 1) & (label == 1) & valid).sum()
    union = (((pred == 1) | (label == 1)) & valid).sum()
    assert inter / union > 0.95  # hard label at 1 canvas px = 3.7 px: resolution-bound (test_scoring_oracle)
    assert T.test_size(50, 40, 129) == (128, 96)  # small images are scaled up (PFENet Resize)


def _rotate_reference(image, label, angle, *, pad=T.MEAN, ignore=255):
    """cv2.warpAffine's rotation about (w / 2, h / 2), written out with scipy: each output
    pixel (x, y) reads the source at R(-angle) (x - cx, y - cy) + (cx, cy), bilinear with the
    border ``pad`` for the image, nearest with ``ignore`` for the label (a source within half a
    pixel of the edge reads the edge pixel: scipy's ``grid-constant``).

    The test's own reference, independent of the code under test (not even its
    ``rotation_matrix``) and of bench/fss_rotate.py, whose ``map_coordinates`` version is a
    timing baseline that may change with the benchmark."""
    from scipy import ndimage

    h, w = label.shape
    a, b = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    cy, cx = h / 2, w / 2
    # (row, col) of the source = matrix @ (row, col) of the output + offset
    matrix = np.array([[a, b], [-b, a]])
    offset = np.array([cy - a * cy - b * cx, cx + b * cy - a * cx])
    img = np.asarray(image, dtype=np.float32)
    out = np.stack([ndimage.affine_transform(img[..., c], matrix, offset, order=1,
                                             mode="constant", cval=float(pad[c]))
                    for c in range(img.shape[2])], axis=-1)
    lab = ndimage.affine_transform(label, matrix, offset, order=0, mode="grid-constant",
                                  cval=ignore)
    return out, lab


@pytest.mark.parametrize("angle", [-10.0, -3.7, 0.5, 6.2, 10.0, 90.0])
def test_rotation_matches_a_scipy_reference(angle):
    from skimage import data

    image = data.astronaut()[:301, :250].astype(np.float32)  # odd and even sides
    label = np.zeros(image.shape[:2], np.uint8)
    label[60:200, 40:180] = 1
    label[:5] = 255
    img, lab = T.rotate(image, label, angle)
    ref_img, ref_lab = _rotate_reference(image, label, angle)
    assert img.dtype == np.float32 and lab.dtype == np.uint8 and img.shape == image.shape
    inner = np.zeros(label.shape, bool)  # away from the border band where the two differ
    inner[2:-2, 2:-2] = True
    inner &= (ref_lab != 255) & np.roll(ref_lab != 255, (2, 2), (0, 1)) & \
        np.roll(ref_lab != 255, (-2, -2), (0, 1))
    diff = np.abs(img - ref_img)
    assert diff[inner].max() < 0.05  # same bilinear samples inside (0..255 scale)
    assert diff.mean() < 0.5
    assert (lab == ref_lab).mean() > 0.995
    assert (lab == 255).sum() == pytest.approx((ref_lab == 255).sum(), rel=0.02)
    # border value: the ImageNet mean (image) and 255 (label), as PFENet
    if abs(angle) >= 5:
        np.testing.assert_allclose(img[0, 0], T.MEAN, atol=1e-3)
        assert lab[0, 0] == 255 and lab[-1, -1] == 255
