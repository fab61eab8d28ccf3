#!/usr/bin/env python3
"""Renders deploy/k8s/ from the Helm chart helm/herald with its default values
(release "herald"), through Helm's own Go SDK (pip: helm-python-sdk; no helm
binary, no cluster, no network).

    scripts/render-k8s.py          write deploy/k8s/*.yaml
    scripts/render-k8s.py --check  exit 1 if deploy/k8s/ differs from a fresh render

One file per chart template. Left out: NOTES.txt, empty templates, and the
Secret the chart would generate with random keys (herald-auth): create it
yourself, as deploy/k8s/README.md shows, so that no key is ever committed.
"""

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "herald"
OUT = ROOT / "deploy" / "k8s"
RELEASE = "herald"
NAMESPACE = "herald"
GENERATED_SECRET = f"{RELEASE}-auth"
HEADER = ("# Rendered from helm/herald (default values, release \"herald\") by\n"
          "# scripts/render-k8s.py. Do not edit: change the chart and run it again.\n")


def render(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    """The chart's manifests, by template path, as Helm renders them."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=name, namespace=namespace, is_install=True)


def documents(text: str) -> list[str]:
    """The non-empty YAML documents of one rendered template."""
    docs = []
    for doc in ("\n" + text).split("\n---"):
        if any(line.strip() and not line.lstrip().startswith("#") for line in doc.splitlines()):
            docs.append(doc.strip("\n"))
    return docs


def generated_secret(obj: dict) -> bool:
    return obj["kind"] == "Secret" and obj["metadata"]["name"] == GENERATED_SECRET


def plain_manifests() -> dict[str, str]:
    """deploy/k8s/ as it should be: file name -> content."""
    files = {}
    for template, text in sorted(render().items()):
        if template.endswith("NOTES.txt"):
            continue
        kept = [doc for doc in documents(text) if not generated_secret(yaml.safe_load(doc))]
        if kept:
            files[Path(template).name] = HEADER + "---\n" + "\n---\n".join(kept) + "\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = parser.parse_args()
    want = plain_manifests()
    have = {p.name: p.read_text() for p in OUT.glob("*.yaml")}
    if args.check:
        drift = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
        if drift:
            print(f"deploy/k8s/ differs from the chart in: {', '.join(drift)}; run scripts/render-k8s.py",
                  file=sys.stderr)
            return 1
        print(f"deploy/k8s/ matches the chart ({len(want)} files)")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name in have.keys() - want.keys():
        (OUT / name).unlink()
    for name, text in want.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(want)} files to deploy/k8s/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
