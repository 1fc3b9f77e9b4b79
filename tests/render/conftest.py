import sys
from pathlib import Path

# render_sample.py (shared sample inputs) and the fakekube package live beside these tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
