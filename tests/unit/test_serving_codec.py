"""Request decoding: every bad input is an InputError naming the field and a reason."""

import math
from unittest import mock

import numpy as np
import pytest
from kserve.protocol.infer_type import InferInput

from serving.codec import NAMES, InputError, from_rows, from_v1, from_v2

ROW = {
    "tenure_months": 12,
    "monthly_charges": 70.5,
    "total_charges": None,
    "support_calls": 2,
    "age": 41,
    "contract": "one-year",
    "payment_method": None,
    "internet_service": "fiber",
}


def as_list(row: dict) -> list:
    return [row[n] for n in NAMES]


def test_objects_and_lists_decode_alike():
    a = from_v1({"instances": [ROW]}, 10)
    b = from_v1({"instances": [as_list(ROW)]}, 10)
    np.testing.assert_array_equal(a.numeric, b.numeric)
    assert a.categorical.tolist() == b.categorical.tolist() == [["one-year", None, "fiber"]]
    assert math.isnan(a.numeric[0, 2])


@pytest.mark.parametrize(
    ("body", "reason", "needle"),
    [
        ({"instances": []}, "empty_batch", "empty batch"),
        ({"instances": [ROW] * 11}, "batch_too_large", "over the limit of 10"),
        ({"rows": [ROW]}, "wrong_shape", "'instances'"),
        ({"instances": ROW}, "wrong_shape", "must be a list"),
        ({"instances": [{k: v for k, v in ROW.items() if k != "age"}]}, "missing_feature", "'age'"),
        ({"instances": [{**ROW, "zip": 1}]}, "extra_feature", "'zip'"),
        ({"instances": [{**ROW, "age": "old"}]}, "wrong_type", "feature 'age' must be a number"),
        ({"instances": [{**ROW, "age": True}]}, "wrong_type", "feature 'age'"),
        ({"instances": [{**ROW, "contract": 3}]}, "wrong_type", "feature 'contract' must be a str"),
        ({"instances": [{**ROW, "tenure_months": None}]}, "null_value", "'tenure_months'"),
        ({"instances": [{**ROW, "contract": None}]}, "null_value", "'contract' must not be null"),
        ({"instances": [{**ROW, "tenure_months": float("nan")}]}, "null_value", "NaN"),
        ({"instances": [{**ROW, "monthly_charges": float("inf")}]}, "wrong_type", "finite"),
        ({"instances": [as_list(ROW)[:7]]}, "wrong_shape", "expected 8 values"),
        ({"instances": ["a row"]}, "wrong_type", "instances[0]"),
        ({"instances": [{**ROW, "contract": "Month-to-month"}]}, "unknown_category", "'contract'"),
        (
            {"instances": [{**ROW, "age": -40}]},
            "out_of_range",
            "feature 'age' is -40, outside [18, 110]",
        ),
        ({"instances": [{**ROW, "tenure_months": 5000}]}, "out_of_range", "'tenure_months'"),
    ],
)
def test_bad_v1_requests(body, reason, needle):
    with pytest.raises(InputError, match=".*") as err:
        from_v1(body, 10)
    assert err.value.reason == reason
    assert needle in str(err.value)


def v2_inputs(row: dict, n: int = 1) -> list[InferInput]:
    out = []
    for name in NAMES:
        value = row[name]
        datatype = "BYTES" if name in ("contract", "payment_method", "internet_service") else "FP64"
        out.append(InferInput(name, [n], datatype, [value] * n))
    return out


def test_v2_named_inputs_and_matrix_agree():
    named = from_v2(v2_inputs(ROW, 3), 10)
    matrix = InferInput(
        "input-0", [3, 8], "BYTES", [str(v) if v is not None else "" for v in as_list(ROW)] * 3
    )
    flat = from_v2([matrix], 10)
    np.testing.assert_array_equal(named.numeric, flat.numeric)
    assert named.categorical.tolist()[0][0] == flat.categorical.tolist()[0][0] == "one-year"


def test_bad_v2_requests():
    cases = [
        (v2_inputs(ROW)[:-1], "missing_feature", "internet_service"),
        (v2_inputs(ROW) + [InferInput("zip", [1], "FP64", [1.0])], "extra_feature", "zip"),
        (
            [*v2_inputs(ROW)[:5], InferInput("contract", [1], "FP64", [1.0]), *v2_inputs(ROW)[6:]],
            "wrong_type",
            "input 'contract'",
        ),
        (
            [InferInput("tenure_months", [2], "FP64", [1.0, 2.0]), *v2_inputs(ROW)[1:]],
            "wrong_shape",
            "input 'monthly_charges'",
        ),
        ([InferInput("m", [1, 7], "BYTES", ["1"] * 7)], "wrong_shape", "expected [n, 8]"),
        ([], "wrong_shape", "no inputs"),
    ]
    for inputs, reason, needle in cases:
        with pytest.raises(InputError) as err:
            from_v2(inputs, 10)
        assert (err.value.reason, needle in str(err.value)) == (reason, True), str(err.value)


def test_rows_over_limit_in_v2():
    with pytest.raises(InputError, match="over the limit"):
        from_v2(v2_inputs(ROW, 11), 10)


def test_from_rows_keeps_field_in_message():
    with pytest.raises(InputError, match=r"row\[1\]: feature 'age'"):
        from_rows([as_list(ROW), {**ROW, "age": "x"}], 10, field="row")


def _rows(n: int) -> list[dict]:
    """n valid rows with every kind of value: ints and floats, nulls where allowed, every
    category."""
    contracts, payments = (
        ["month-to-month", "one-year", "two-year"],
        [
            "card",
            "bank-transfer",
            None,
            "electronic-check",
            "mailed-check",
        ],
    )
    return [
        {
            **ROW,
            "tenure_months": i % 120,
            "monthly_charges": 20.5 + i % 50,
            "total_charges": None if i % 7 == 0 else float(i),
            "age": None if i % 11 == 0 else 18 + i % 80,
            "contract": contracts[i % 3],
            "payment_method": payments[i % 5],
        }
        for i in range(n)
    ]


def test_the_column_wise_path_decodes_as_the_row_by_row_one():
    """A batch of plain JSON values takes the column-wise path (no loop per row); the
    row-by-row path gives the same arrays."""
    from serving import codec
    from serving.codec import _from_rows_checked

    rows = _rows(256)
    row_path = mock.patch.object(codec, "_from_rows_checked", side_effect=AssertionError)
    for body in (rows, [as_list(r) for r in rows]):
        with row_path:
            fast = from_v1({"instances": body}, 256)
        slow = _from_rows_checked(body, "instances")
        np.testing.assert_array_equal(fast.numeric, slow.numeric)
        assert fast.categorical.tolist() == slow.categorical.tolist()
        np.testing.assert_array_equal(fast.category_codes(), slow.category_codes())
    categorical = ("contract", "payment_method", "internet_service")
    named = from_v2(
        [
            InferInput(n, [256], "BYTES", [r[n] or "" for r in rows])
            if n in categorical
            else InferInput(n, [256], "FP64", [r[n] for r in rows])
            for n in NAMES
        ],
        256,
    )
    np.testing.assert_array_equal(named.numeric, fast.numeric)
    assert named.categorical.tolist() == fast.categorical.tolist()


def test_a_single_row_is_decoded_value_by_value_as_column_wise():
    """One row takes the row-by-row path (fewer numpy calls); the column-wise one gives the same
    arrays for it."""
    from serving import codec

    for row in _rows(40):
        for body in (row, as_list(row)):
            with mock.patch.object(codec, "_from_columns", side_effect=AssertionError):
                one = from_v1({"instances": [body]}, 10)
            columns = [(v,) for v in as_list(row)]
            wise = codec._from_columns(columns, 1)
            assert wise is not None
            np.testing.assert_array_equal(one.numeric, wise.numeric)
            np.testing.assert_array_equal(one.category_codes(), wise.category_codes())
            assert one.categorical.tolist() == wise.categorical.tolist()


@pytest.mark.parametrize(
    ("bad", "reason", "needle"),
    [
        ({"age": "old"}, "wrong_type", "instances[200]: feature 'age' must be a number"),
        ({"age": True}, "wrong_type", "instances[200]: feature 'age'"),
        ({"age": 500}, "out_of_range", "instances[200]: feature 'age' is 500"),
        ({"tenure_months": None}, "null_value", "instances[200]: feature 'tenure_months'"),
        ({"contract": "weekly"}, "unknown_category", "instances[200]: feature 'contract'"),
        ({"contract": ["one-year"]}, "wrong_type", "instances[200]: feature 'contract'"),
        ({"monthly_charges": float("inf")}, "wrong_type", "instances[200]: feature 'monthly"),
    ],
)
def test_one_bad_value_in_a_large_batch_is_named_by_row_and_field(bad, reason, needle):
    rows = _rows(256)
    rows[200] = {**rows[200], **bad}
    with pytest.raises(InputError) as err:
        from_v1({"instances": rows}, 256)
    assert err.value.reason == reason and needle in str(err.value), str(err.value)
