"""SE(3) under torch.compile: the basis bookkeeping stays eager, and importing the recipe does not
pay for torch._dynamo (a bad flag is refused as quickly as in the other recipes)."""
import subprocess
import sys

import torch

from runtime.compile import maybe_compile
from se3_transformer.model import basis
from tests.se3_transformer.helpers import random_batch
from tests.se3_transformer.test_model import tiny_model


def test_importing_the_recipe_imports_neither_dynamo_nor_e3nn():
    code = ("import sys, se3_transformer.train, se3_transformer.evaluate, se3_transformer.predict; "
            "print(sorted(m for m in ('torch._dynamo', 'e3nn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_compiled_model_matches_eager_with_the_basis_functions_disabled():
    model = tiny_model(torch.float32)
    batch = random_batch(dtype=torch.float32)
    expected = model(batch)
    compiled = maybe_compile(model, True)       # the suite's backend: eager (conftest)
    for fn in (basis.get_basis, basis.fuse_basis, basis.pair_basis):
        assert fn.target is not fn.__wrapped__ and getattr(fn.target, "_torchdynamo_disable", False), fn.__name__
    torch.testing.assert_close(compiled(batch), expected)
