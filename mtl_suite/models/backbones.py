"""Backbone registry. Every backbone takes raw RGB pixels in [0, 255] and normalises inside its own graph, so a
saved or served model needs no preprocessing outside it (Keras applications disagree on input scaling:
Inception/Xception/MobileNet want [-1, 1], EfficientNet rescales itself).

A backbone model maps an image to a pooled feature vector; stage heads are added on top (models/heads.py).

The registry itself imports no Keras (the CLI lists its names in --help and must start fast): Keras is imported
when a backbone is built.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from mtl_suite.config import ExperimentConfig
from mtl_suite.errors import UserError
from mtl_suite.models.weights import WeightsChoice, keras_weights_argument, resolve_weights
from mtl_suite.paths import MOBILENET_025_WEIGHTS

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: Callable[..., keras.Model]  # keras.applications-style: (input_shape=, weights=) -> base model
    default_size: int
    min_size: int
    normalisation: Callable[[], keras.layers.Layer]  # raw [0, 255] -> what the base expects
    imagenet_file: str | None = None  # file name in Keras's cache (~/.keras/models), for provenance
    bundled_weights: tuple[str, str] | None = None  # (path, sha256) of ImageNet weights shipped in the package
    description: str = ""

    @property
    def default_cell_size(self) -> int:
        """Single cells are 40-60 px in a 224 px field: 64 px keeps them sharp without upsampling much, raised to
        the network's minimum input size where that is larger (Xception 71, Inception 75)."""
        return max(CELL_SIZE, self.min_size)


CELL_SIZE = 64


def _to_minus_one_one() -> keras.layers.Layer:
    import keras

    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")


def _identity() -> keras.layers.Layer:
    import keras

    return keras.layers.Identity(name="normalise")  # EfficientNet rescales and normalises inside itself


def _to_unit() -> keras.layers.Layer:
    import keras

    return keras.layers.Rescaling(1.0 / 255.0, name="normalise")


def _tiny_cnn(input_shape: tuple[int, int, int], weights: str | None = None) -> keras.Model:
    """About 10k parameters: lets the whole pipeline run end to end in seconds in tests."""
    if weights is not None:
        raise UserError("the tiny backbone has no pretrained weights: use --weights none")
    import keras

    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((8, 16, 32)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"tiny_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"tiny_bn{i}")(x)
        x = keras.layers.ReLU(name=f"tiny_relu{i}")(x)
    return keras.Model(inputs, x, name="tiny")


def _no_top(application: str, **fixed: Any) -> Callable[..., keras.Model]:
    """`keras.applications.<application>` without its classifier, looked up when called (Keras loads only then)."""

    def construct(**kwargs: Any) -> keras.Model:
        import keras

        return getattr(keras.applications, application)(include_top=False, **fixed, **kwargs)

    construct.__name__ = construct.__qualname__ = f"{application}_no_top"
    return construct


_mobilenet_025 = _no_top("MobileNet", alpha=0.25)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("inception_v3", _no_top("InceptionV3"), 299, 75, _to_minus_one_one,
                     imagenet_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     description="paper backbone, 21.8M parameters"),
        BackboneSpec("xception", _no_top("Xception"), 299, 71, _to_minus_one_one,
                     imagenet_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     description="paper backbone, 20.9M parameters"),
        BackboneSpec("inception_resnet_v2", _no_top("InceptionResNetV2"), 299, 75, _to_minus_one_one,
                     imagenet_file="inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
                     description="paper backbone, 54.3M parameters"),
        BackboneSpec("mobilenet_025", _mobilenet_025, 224, 32, _to_minus_one_one,
                     imagenet_file="mobilenet_2_5_224_tf_no_top.h5",
                     bundled_weights=(str(MOBILENET_025_WEIGHTS),
                                      "dbdb03ee2a22fd895301636cd328b234bb3a9952358f436d82f46b81e0d5b0bf"),
                     description="MobileNet v1 alpha 0.25, 0.2M parameters; ImageNet weights bundled (offline default)"),
        BackboneSpec("mobilenet_v2", _no_top("MobileNetV2"), 224, 32, _to_minus_one_one,
                     imagenet_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                     description="MobileNet v2 alpha 1.0, 2.3M parameters"),
        BackboneSpec("efficientnet_b0", _no_top("EfficientNetB0"), 224, 32, _identity,
                     imagenet_file="efficientnetb0_notop.h5", description="EfficientNet-B0, 4.0M parameters"),
        BackboneSpec("tiny", _tiny_cnn, 64, 16, _to_unit, description="tiny CNN for tests (no pretrained weights)"),
    ]
}


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r}. Expected one of: {', '.join(BACKBONES)}") from None


def with_backbone_sizes(config: ExperimentConfig) -> ExperimentConfig:
    """`config` with the sizes it leaves open (None) set for its backbone: the image size the backbone was made for
    (299 for the paper's, 224 for MobileNet) and its default cell size, never below its minimum."""
    data, spec = config.data, get_backbone_spec(config.train.backbone)
    image_size = spec.default_size if data.image_size is None else data.image_size
    cell_size = spec.default_cell_size if data.cell_size is None else data.cell_size
    return dataclasses.replace(config, data=dataclasses.replace(data, image_size=image_size, cell_size=cell_size))


def check_image_size(spec: BackboneSpec, size: int) -> None:
    if size < spec.min_size:
        raise UserError(f"image size {size} is below {spec.name}'s minimum of {spec.min_size} px. Received: {size}")


def build_backbone(name: str, image_size: int, weights: str = "none",
                   precision: str = "float32", stain: str = "none") -> tuple[keras.Model, WeightsChoice]:
    """Raw image -> [stain control] -> normalisation -> base network (batch norm kept in inference mode, the usual
    choice for fine-tuning small medical datasets) -> global average pooling. Returns the model and where its weights
    came from. `precision` (models/precision.py) sets the dtype policy of every layer; weights stay float32.
    `stain` (models/stain.py): none, or a weightless layer before the normalisation, so every path that runs the
    model (training, the activation cache's lower part, predict, serving) applies it."""
    import keras

    from mtl_suite.models.precision import precision_scope
    from mtl_suite.models.stain import stain_layer

    spec = get_backbone_spec(name)
    check_image_size(spec, image_size)
    choice = resolve_weights(spec, weights)
    input_shape = (image_size, image_size, 3)
    with precision_scope(precision):
        base = _construct(spec, input_shape, choice)
        base.name = "base"  # a fixed name: weight transfer and fine-tuning find it by this name
        inputs = keras.Input(input_shape, name="image")
        x = inputs
        stain_control = stain_layer(stain)
        if stain_control is not None:
            x = stain_control(x)
        x = spec.normalisation()(x)
        x = base(x, training=False)
        outputs = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inputs, outputs, name="backbone"), choice


def _construct(spec: BackboneSpec, input_shape: tuple[int, int, int], choice: WeightsChoice) -> keras.Model:
    try:
        with warnings.catch_warnings():  # a mismatching file warns once per layer before it fails; we say it once
            warnings.simplefilter("ignore", UserWarning)
            return spec.constructor(input_shape=input_shape, weights=keras_weights_argument(choice))
    except UserError:
        raise
    except Exception as exc:  # Keras raises plain Exception/ValueError for download and shape problems
        if choice.kind == "imagenet" and choice.path is None:
            raise UserError(
                f"ImageNet weights for {spec.name} could not be obtained ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}). Offline? Put {spec.imagenet_file} in ~/.keras/models/ "
                f"or pass --weights /path/to/{spec.imagenet_file} (or --weights none for random init)"
            ) from None
        if choice.kind == "file":
            raise UserError(
                f"weights file {choice.path} does not fit backbone {spec.name} at {input_shape[0]} px: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from None
        raise


def base_model(backbone: keras.Model) -> keras.Model:
    return backbone.get_layer("base")


def set_trainable_top(backbone: keras.Model, n_layers: int) -> int:
    """Freeze the backbone except its top `n_layers` layers that hold weights; batch-norm layers stay frozen
    (their statistics would be ruined by small batches). Returns how many layers were unfrozen."""
    import keras

    base = base_model(backbone)
    backbone.trainable = True
    for layer in base.layers:
        layer.trainable = False
    weighted = [l for l in base.layers if l.weights and not isinstance(l, keras.layers.BatchNormalization)]
    chosen = weighted[-n_layers:] if n_layers > 0 else []
    for layer in chosen:
        layer.trainable = True
    return len(chosen)
