"""Signatures and class members read from source (bench.signatures) agree with the imported ones, and
the reader declines (returns None, so bench imports) wherever the source alone cannot be exact."""
import inspect
import re
import sys
import textwrap

import pytest

from bench.plugins import PluginManager
from bench.registry import Registry
from bench.signatures import static_members, static_signature
from bench.testing import class_problems


def _described(sig: inspect.Signature) -> list[tuple]:
    """Parameters as comparable text (``context``'s annotation is never evaluated; object addresses vary)."""
    def text(value):
        return re.sub(r" at 0x[0-9a-f]+", "", repr(value))
    return [(p.name, p.kind, text(p.default), None if p.name == "context" else text(p.annotation))
            for p in sig.parameters.values()]


@pytest.fixture(scope="module")
def builtin_entries():
    manager = PluginManager()
    manager.load_entry_points()
    return [e for _, reg in manager.registries.items() for e in reg if isinstance(e.target, str)]


def test_every_builtin_signature_read_from_source_equals_the_imported_one(builtin_entries):
    static = 0
    for entry in builtin_entries:
        sig = static_signature(entry.target)
        if sig is None:
            continue
        static += 1
        real = inspect.signature(entry.load(), eval_str=True)
        assert _described(sig) == _described(real), entry.target
    assert static == len(builtin_entries)  # every built-in is readable: validate imports none of them


def test_every_builtin_class_check_from_source_equals_the_imported_one(builtin_entries):
    for entry in builtin_entries:
        fresh = type(entry)(entry.kind, entry.name, entry.target, entry.plugin, entry.defaults, entry.meta)
        from_source = class_problems(fresh)
        fresh.load()
        assert class_problems(fresh) == from_source, entry.target


@pytest.fixture
def module_source(tmp_path, monkeypatch):
    """Write a module ``mod_<n>`` into a fresh package on sys.path; return its name."""
    pkg = tmp_path / "sigpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    counter = iter(range(1000))

    def write(text: str) -> str:
        name = f"mod_{next(counter)}"
        (pkg / f"{name}.py").write_text(textwrap.dedent(text))
        return f"sigpkg.{name}"

    yield write
    for name in [m for m in sys.modules if m == "sigpkg" or m.startswith("sigpkg.")]:
        del sys.modules[name]


def test_a_plain_factory_is_read_with_constants_aliases_and_light_imports(module_source):
    mod = module_source("""
        from typing import Annotated, Literal
        from pydantic import Field
        from bench.types import Steps
        import heavy_library_that_does_not_exist
        Mode = Literal["a", "b"]
        SIZES = (1, 2)

        def factory(steps: Steps = 10, mode: Mode = "a", sizes: tuple = SIZES,
                    rate: Annotated[float, Field(gt=0)] = 0.5, *, context=None, **extra):
            return heavy_library_that_does_not_exist.build()
    """)
    sig = static_signature(f"{mod}:factory")
    assert sig is not None and mod not in sys.modules  # read without importing the module
    assert list(sig.parameters) == ["steps", "mode", "sizes", "rate", "context", "extra"]
    assert sig.parameters["sizes"].default == (1, 2)
    assert sig.parameters["mode"].annotation.__args__ == ("a", "b")
    assert sig.parameters["extra"].kind is inspect.Parameter.VAR_KEYWORD


@pytest.mark.parametrize("source, reason", [
    ("import functools\n@functools.lru_cache\ndef target(a=1): pass", "decorated"),
    ("X = 1\nX = 2\ndef target(a=X): pass", "assigned twice"),
    ("X = 1\nX += 1\ndef target(a=X): pass", "augmented"),
    ("try:\n    X = 1\nexcept Exception:\n    X = 2\ndef target(a=X): pass", "conditional"),
    ("def make(): return 1\ndef target(a=make()): pass", "defined by code"),
    ("import os\nclass target:\n    N = 3\n    def __init__(self, n=N): pass", "class-level name"),
    ("class Meta(type): pass\nclass target(metaclass=Meta):\n    def __init__(self, a=1): pass", "metaclass"),
    ("class A:\n    def __init__(self, a=1): pass\nclass B:\n    def __init__(self, b=2): pass\n"
     "class target(A, B): pass", "several bases"),
    ("class target:\n    def __new__(cls, a=1): return object.__new__(cls)", "__new__"),
    ("from sigpkg_missing_heavy import Thing\ndef target(a: Thing = None): pass", "unknown library"),
])
def test_the_reader_declines_what_it_cannot_read_exactly(module_source, source, reason):
    mod = module_source(source)
    assert static_signature(f"{mod}:target") is None, reason


def test_an_inherited_init_is_found_through_the_bases(module_source):
    base = module_source("""
        import abc
        class Base(abc.ABC):
            def __init__(self, steps: int = 5, eta: float = 0.0):
                self.steps = steps
    """)
    mod = module_source(f"""
        from {base} import Base
        class Child(Base):
            def run(self, x):
                return x
    """)
    sig = static_signature(f"{mod}:Child")
    assert [(p.name, p.default) for p in sig.parameters.values()] == [("steps", 5), ("eta", 0.0)]
    assert sig == inspect.signature(__import__(mod, fromlist=["Child"]).Child)


def test_a_class_missing_a_method_or_with_a_wrong_arity_is_caught_from_source(module_source):
    mod = module_source("""
        class NoSample:
            def __init__(self, steps: int = 5):
                self.steps = steps
        class WrongArity:
            def sample(self):
                return None
    """)
    reg = Registry("sampler")
    reg.register("none", f"{mod}:NoSample")
    reg.register("wrong", f"{mod}:WrongArity")
    entries = [reg.entry("none"), reg.entry("wrong")]
    from_source = [class_problems(entry) for entry in entries]
    assert all(static_members(entry.target) is not None for entry in entries) and mod not in sys.modules
    assert "missing method 'sample'" in from_source[0][0] and "cannot be called as sample(2" in from_source[1][0]
    for entry in entries:
        entry.load()
    assert [class_problems(entry) for entry in entries] == from_source


def test_from_context_parameters_are_filled_by_bench_and_hidden_from_suites(module_source):
    mod = module_source("""
        class Noise:
            def __init__(self, shape, gamma: float = 1.0):
                self.shape, self.gamma = tuple(shape), gamma
    """)
    reg = Registry("noise_model")
    reg.register("n", f"{mod}:Noise", from_context={"shape": "data.shape"})
    assert list(reg.entry("n").signature().parameters) == ["gamma"]
    assert reg.resolve("n", {}) == {"name": "n", "id": "n", "gamma": 1.0}

    class Data:
        shape = (1, 4, 4)

    class Context:
        data = Data()

    built = reg.create({"name": "n", "gamma": 2.0}, Context())
    assert built.shape == (1, 4, 4) and built.gamma == 2.0
    with pytest.raises(ValueError, match="needs data.shape from the build context"):
        reg.create({"name": "n"}, None)
