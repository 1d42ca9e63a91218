from pathlib import Path

from mlstack.data import generate
from mlstack.schema import TARGET, columns


def test_same_seed_same_bytes(tmp_path: Path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    generate.write_csv(generate.generate(500, 11), a)
    generate.write_csv(generate.generate(500, 11), b)
    assert a.read_bytes() == b.read_bytes()
    generate.write_csv(generate.generate(500, 12), b)
    assert a.read_bytes() != b.read_bytes()


def test_shape_missing_values_and_imbalance():
    df = generate.generate(3000, 1)
    assert list(df.columns) == columns()
    assert df[["total_charges", "age", "payment_method"]].isna().any().all()
    assert 0.1 < df[TARGET].mean() < 0.4


def test_drifted_batch_moves_the_population():
    base, drifted = generate.generate(3000, 1), generate.generate(3000, 1, drift=True)
    assert drifted["monthly_charges"].mean() > base["monthly_charges"].mean() + 10
    assert drifted["support_calls"].mean() > base["support_calls"].mean() + 1
    share = (drifted["contract"] == "month-to-month").mean()
    assert share > (base["contract"] == "month-to-month").mean() + 0.1
