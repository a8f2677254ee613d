import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_zip_bundles_backend_but_never_training(tmp_path):
    done = subprocess.run([sys.executable, "build_addon.py", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    archive = Path(done.stdout.strip())
    names = zipfile.ZipFile(archive).namelist()
    assert "rfit/__init__.py" in names
    assert "rfit/backend/library/index.py" in names
    assert not [n for n in names if "/training/" in n or n.startswith("training/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
