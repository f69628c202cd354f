import albumentations as A
import numpy as np
import pytest

from mtl_suite.data.pipeline import array_dataset
from mtl_suite.errors import UserError
from mtl_suite.imaging.augment import (POLICIES, balance_classes, build_transform, get_batch_augment,
                                       get_pair_augment, preview_grid)


def batch(n=6, h=48, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_none_policy_is_no_hook_and_unknown_names_list_the_valid_ones():
    assert get_batch_augment("none") is None
    with pytest.raises(UserError) as info:
        get_batch_augment("flipflop")
    for name in ("none", "paper", "paper+color"):
        assert name in str(info.value)


@pytest.mark.parametrize("policy", ["paper", "paper+color", "hed", "paper+hed", "zoom+hed"])
def test_policies_change_images_keep_shape_and_repeat_under_a_seed(policy):
    images = batch()
    augment = get_batch_augment(policy)
    first = augment(images, np.random.default_rng(3))
    assert first.shape == images.shape and first.dtype == np.uint8
    assert not np.array_equal(first, images)
    np.testing.assert_array_equal(first, augment(images, np.random.default_rng(3)))


def test_strength_zero_paper_policy_only_flips():
    images = batch()
    out = get_batch_augment("paper", strength=0.0)(images, np.random.default_rng(0))
    for original, augmented in zip(images, out):
        candidates = [original, original[::-1], original[:, ::-1], original[::-1, ::-1]]
        assert any(np.array_equal(augmented, c) for c in candidates)


def test_pair_augmentation_keeps_masks_aligned_with_images():
    masks = np.zeros((8, 64, 64), bool)
    masks[:, 10:30, 20:50] = True
    masks[:, 40:55, 5:15] = True
    images = np.repeat((masks * 255).astype(np.uint8)[..., None], 3, axis=3)  # the image *is* its mask
    out_images, out_masks = get_pair_augment("paper+color")(images, masks, np.random.default_rng(1))
    assert out_masks.dtype == bool
    assert not np.array_equal(out_masks, masks)  # geometry changed ...
    agreement = ((out_images[..., 0] > 127) == out_masks).mean()
    assert agreement > 0.98  # ... identically for both (only interpolated edge pixels differ)


def test_augmentation_reaches_training_batches_only():
    images, labels = batch(8, 32, 32), np.arange(8)
    augment = get_batch_augment("paper")
    evaluation = np.concatenate([x for x, _ in array_dataset(images, labels, 4, training=False, seed=0,
                                                             augment=augment).as_numpy_iterator()])
    np.testing.assert_array_equal(evaluation, images)
    train = [(x, y) for x, y in array_dataset(images, labels, 4, training=True, seed=0,
                                              augment=augment).as_numpy_iterator()]
    x, y = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    assert not np.array_equal(x, images[y])


def test_balance_classes_fills_each_class_to_the_target_with_augmented_copies():
    images = batch(7)
    labels = np.array(["a", "a", "a", "a", "a", "b", "b"])
    out_images, out_labels = balance_classes(images, labels, 10, "paper", seed=0)
    assert dict(zip(*np.unique(out_labels, return_counts=True))) == {"a": 10, "b": 10}
    np.testing.assert_array_equal(out_images[:7], images)  # originals kept, first
    originals = {im.tobytes() for im in images}
    assert sum(im.tobytes() in originals for im in out_images[7:]) <= 2  # copies are augmented, not repeats
    again, _ = balance_classes(images, labels, 10, "paper", seed=0)
    np.testing.assert_array_equal(again, out_images)


def test_balance_classes_never_drops_and_checks_its_inputs():
    images, labels = batch(4), np.array([0, 0, 0, 1])
    out_images, out_labels = balance_classes(images, labels, 2, "paper", seed=0)
    assert np.bincount(out_labels).tolist() == [3, 2]  # class 0 above the target keeps all 3
    np.testing.assert_array_equal(out_images[:4], images)
    with pytest.raises(UserError):
        balance_classes(images, labels[:3], 5, "paper", seed=0)
    with pytest.raises(UserError):
        balance_classes(images, labels, 0, "paper", seed=0)


def test_a_yaml_policy_file_is_a_policy(tmp_path):
    path = tmp_path / "policy.yaml"
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(path), data_format="yaml")
    images = batch(2)
    out = get_batch_augment(str(path))(images, np.random.default_rng(0))
    np.testing.assert_array_equal(out, images[:, :, ::-1])
    with pytest.raises(UserError, match="not found"):
        build_transform(str(tmp_path / "missing.yaml"))


def test_preview_grid_has_one_row_per_image_and_a_column_per_copy():
    grid = preview_grid(batch(3), "paper", copies=4, tile=32)
    assert grid.shape == (3 * 36 + 4, 5 * 36 + 4, 3)
    assert set(POLICIES) >= {"none", "paper", "paper+color"}


def test_hed_jitter_changes_stain_not_geometry():
    """HED jitter recolours every pixel by its own colour: two pixels of equal colour stay equal, wherever they are."""
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[:, :16] = (150, 60, 160)  # a purple (stained) half and a pink half
    images[:, 16:] = (230, 180, 200)
    out = get_batch_augment("hed")(images, np.random.default_rng(0))
    assert not np.array_equal(out, images)
    for image in out:
        assert len(np.unique(image[:16].reshape(-1, 3), axis=0)) == 1
        assert len(np.unique(image[16:].reshape(-1, 3), axis=0)) == 1


def test_stain_shifts_are_fixed_and_cover_disjoint_thirds():
    from mtl_suite.imaging.augment import STAIN_SHIFTS, stain_shifted

    images = np.repeat(batch(n=1, seed=5), 6, axis=0)  # six copies of one image
    out = stain_shifted(images)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, stain_shifted(images))  # nothing drawn at random
    assert len(STAIN_SHIFTS) == 3
    for k in range(3):  # image k and k + 3 get the same shift; the three shifts differ and all change the image
        np.testing.assert_array_equal(out[k], out[k + 3])
        assert np.abs(out[k].astype(int) - images[k]).mean() > 3
    assert not np.array_equal(out[0], out[1]) and not np.array_equal(out[1], out[2])
