"""Runs recorded before behaviour versions, whose identity held a sha256 of their source bytes.

Until commit 806d491 a run's ``fingerprint`` held ``code``: a digest of the bytes of every file
its algorithm imported (what ``identity.training_sources`` lists). Such a run is accepted, and restamped in
the new form, when that digest is the one the landed code gives for its algorithm (so the code
that trained it is the code whose behaviour is declared as version 1 everywhere) and the rest of
its fingerprint (settings, data, threads, ranks) matches. Those runs recorded neither torch nor
the CPU; they are taken to be the machine's own when torch is the release that trained them.
"""

from __future__ import annotations

from typing import Any

# sources.digest(training_sources(name)) at 806d491, the last commit identified by bytes
DIGESTS = {
    "anil": "47fdcdf7a2f26cbb357f6cfacf211e108b030a1013270e5b4fe5e2ca71839f51",
    "baseline": "148fd293a5e840a0efa6a0f434682d0b9ac4320cf283d78b03720375177abca4",
    "baselinepp": "148fd293a5e840a0efa6a0f434682d0b9ac4320cf283d78b03720375177abca4",
    "fomaml": "3126adf389cc5a3715a6ff6ad2c6536dc5b460685f112cf7529cc8f7ef297c0e",
    "maml": "3126adf389cc5a3715a6ff6ad2c6536dc5b460685f112cf7529cc8f7ef297c0e",
    "matchingnet": "afdaf58faa7c023d0270a00962278c63396ef91afa497bd2d3028fa84fedd5f2",
    "metalstm": "0c813c124beefd8c63d5ac7794cd264629a7649a3e1cc6f59a340c4c7794e7b1",
    "metaoptnet": "2067297650de01b91b8653a74b37adf66d15e90329106a45c196666f5918c86c",
    "metasgd": "ae46f70f66d55e9deee6889bcdd391f56e50c96b2f2885245cd907bf616c4aef",
    "pixelnn": "21b836219638b0b2836a86a81f8aee3cbc13bde2bd1b1d72fe6b5a6a869a0818",
    "protonet": "4af9fc6c73af3e2c4738a71efb3fa4cf36b54457297f812966ad8bf339d0655b",
    "relationnet": "d9509299b609a9ade131c6e50358eb266ed5f8ac46e09aa044984f9ee46966dd",
    "reptile": "1e995259915a079d9841588c026c7aef00f4a26dd27f46eadb323603c5819be5",
    "siamese": "28f5c02ce8c4689a87f6de1b2db45f3c5d26fc334e89220aa3e6d1afea4c989a",
}
COMMIT = "806d491e476b3fc11eadcd2e0d769bd206a2f754"
TORCH = "2.13.0"  # the release every legacy run was trained with (pyproject's pin)


def is_legacy(saved: Any) -> bool:
    return isinstance(saved, dict) and "code" in saved and "behaviour" not in saved


def _first_versions(versions: Any) -> bool:
    """Every declared version in ``versions`` is 1: the behaviour the landed code had."""
    if isinstance(versions, dict):
        return all(_first_versions(value) for value in versions.values())
    return versions == 1


def accepts(saved: dict, current: dict, algorithm: str) -> bool:
    """Whether the legacy fingerprint ``saved`` describes the run whose identity is ``current``."""
    if not is_legacy(saved) or saved["code"] != DIGESTS.get(algorithm):
        return False
    if not _first_versions(current["behaviour"]) or not current["torch"].startswith(TORCH):
        return False
    same = ("config", "dataset", "threads", "ranks")
    return all(saved.get(key) == current.get(key) for key in same)


def provenance(saved: dict) -> dict:
    """The provenance a restamped run records: the landed commit and its source digest."""
    return {"git_commit": COMMIT, "source_digest": saved["code"], "migrated_from": "fingerprint"}
