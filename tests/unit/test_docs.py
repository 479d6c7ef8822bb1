from pathlib import Path

from scripts.config_table import rewrite

ROOT = Path(__file__).parents[2]


def test_readme_configuration_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert rewrite(readme) == readme, "README configuration table is stale: run `make docs`"


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme
    assert "make test" in readme


def test_dev_nats_permissions_are_current() -> None:
    from avatar_shared.bus.identities import deployed_authorization

    written = (ROOT / "deploy" / "k8s" / "overlays" / "dev" / "nats.conf").read_text()
    assert written == deployed_authorization(), "dev NATS permissions are stale: run `make docs`"
