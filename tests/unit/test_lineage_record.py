"""The lineage record (data/lineage.py): what weights have seen accumulates along the chain, survives its JSON form,
and a conflict names the stage and data that saw held-out images."""

from mtl_suite.data.lineage import DataSource, Exposure, HeldOut, short_digest

A, B, C = ("a" * 64, "b" * 64, "c" * 64)


def source(stage: str, seed: int, images: int) -> DataSource:
    return DataSource(stage, f"run-{stage}", "smears:/data", "d" * 64, seed, images)


def test_exposure_accumulates_and_round_trips():
    chain = Exposure().extended(source("stage2", 1, 1), [A]).extended(source("stage3", 1, 1), [B])
    assert chain.digests == {short_digest(A), short_digest(B)}
    assert Exposure.from_json(chain.to_json()) == chain


def test_conflict_counts_the_held_out_images_seen_and_names_their_source():
    seen = Exposure().extended(source("stage2", 1, 2), [A, B])
    assert seen.conflict(HeldOut(frozenset({C}), "d" * 64, 2, "smears:/data")) is None
    message = seen.conflict(HeldOut(frozenset({A, C}), "d" * 64, 2, "smears:/data"))
    assert message.startswith("its weights have seen 1 of this run's 2 held-out images")
    assert "stage2 run run-stage2 trained on 2 images" in message and "split seed 1" in message
    assert "split seed 2" in message
