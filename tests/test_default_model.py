"""The embedded default model is the one its model card and the README describe: a bundle swapped without
updating the docs (or the docs edited without the bundle) fails here."""

from __future__ import annotations

import re

from gigagen.engine.layout import LayoutSpec
from gigagen.models.checkpoint import DEFAULT_WEIGHTS, load_bundle

CARD = DEFAULT_WEIGHTS.parent / "MODEL_CARD.md"
README = DEFAULT_WEIGHTS.parents[2] / "README.md"


def test_the_model_card_names_the_embedded_bundle_and_its_sampling_defaults() -> None:
    b = load_bundle()
    card = CARD.read_text()
    newest = card.split("\n## ")[1]  # the card's top section describes the bundle as shipped
    assert b.identity.split("@")[1] in newest.replace("`", "")
    c = b.config
    # the cascade and defaults the README's status paragraph and the card state: 20x latent, 5x pixels quilted from
    # the exemplar (not sampled), 5x latent, 1.25x layout made of fragments of the exemplar (not sampled either); the
    # 20x decoder grown by a refiner; no autoguidance
    assert c.magnifications == (20.0, 5.0, 5.0, 1.25) and c.decoded_level == 1 and c.exemplar is not None
    assert c.layout == LayoutSpec()
    assert b.exemplar is not None and tuple(b.exemplar.pixels.shape) == (c.exemplar.height, c.exemplar.width, 3)
    assert (c.exemplar.patch, c.exemplar.overlap) == (48, 12)  # the quilt patches the card and README describe
    assert c.guidance_per_level == (1.0, 2.0, 2.0) and c.autoguidance == 1.0 and c.sampling_tile == 128
    assert c.steps_per_level == (20, 60, 60, 60)
    assert c.ae.factor == 8 and c.ae.latent_ch == 12 and c.ae.refine_ch == 32
    readme = README.read_text()
    assert "`gigagen slide --guidance 1,2,2`, the default" in readme and re.search(r"autoguidance\s+1\b", newest)
    assert "`gigagen slide --steps 20,60,60,60`, the default" in readme and "steps 20,60,60,60" in newest.replace("`", "")
    assert "48 px patches" in readme and "48 px" in newest
    assert "layout made of fragments of the exemplar" in readme and "layout made of fragments of the exemplar" in newest


def test_slide_help_states_the_embedded_models_defaults(tmp_path, capsys) -> None:
    """`gigagen slide --help` reads the levels and sampling defaults off the embedded bundle's header, so replacing
    the default model cannot leave the help text naming the old one's (it once said 20,60,60 and 1.5)."""
    import pytest

    from gigagen.cli import main
    from gigagen.commands.slide import embedded_defaults

    c = load_bundle().config
    with pytest.raises(SystemExit):
        main(["slide", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    steps = ",".join(str(n) for n in c.steps_per_level)
    guidance = ",".join(f"{w:g}" for w in c.guidance_per_level)
    levels = ",".join(f"{m:g}x" for m in c.magnifications)
    assert f"{steps} for the embedded model" in text and f"({levels} for the embedded model)" in text
    assert f"{guidance} for the embedded model" in text and f"{c.autoguidance:g} for the embedded model" in text
    assert f"{'fragments' if c.layout is not None else 'sampled'} for the embedded model" in text
    bad = tmp_path / "not_a_bundle.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    assert set(embedded_defaults(bad).values()) == {"?"} == set(embedded_defaults(tmp_path / "missing").values())
    # a Git LFS pointer in place of the weights (a clone without LFS): its text read as a header length is exabytes,
    # which must give "?", not a MemoryError in every gigagen command (the help is built at start-up)
    pointer = tmp_path / "default.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 19845240\n")
    assert set(embedded_defaults(pointer).values()) == {"?"}
