"""The typing stubs (_native.pyi) describe what the module holds: every public name has a stub,
and each function's stub has the runtime signature's parameters, in order, of the same kinds."""

import ast
import inspect
from pathlib import Path

import transferlens as tl
from transferlens import _native

STUBS = Path(_native.__file__).parent / "_native.pyi"


def stub_definitions():
    tree = ast.parse(STUBS.read_text())
    return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def stub_parameters(node):
    args = node.args
    out = [(a.arg, "positional") for a in args.posonlyargs + args.args]
    out += [("*" + args.vararg.arg, "var")] if args.vararg else []
    out += [(a.arg, "keyword") for a in args.kwonlyargs]
    out += [("**" + args.kwarg.arg, "var")] if args.kwarg else []
    return out


def runtime_parameters(function):
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: "positional",
        inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
        inspect.Parameter.KEYWORD_ONLY: "keyword",
    }
    out = []
    for p in inspect.signature(function).parameters.values():
        if p.kind == inspect.Parameter.VAR_POSITIONAL:
            out.append(("*" + p.name, "var"))
        elif p.kind == inspect.Parameter.VAR_KEYWORD:
            out.append(("**" + p.name, "var"))
        else:
            out.append((p.name, kinds[p.kind]))
    return out


def test_every_public_name_has_a_stub():
    stubs = stub_definitions()
    text = STUBS.read_text()
    for name in tl.__all__:
        assert name in stubs or f"{name}:" in text, f"{name} has no stub"


def test_function_stubs_have_the_runtime_parameters():
    stubs = stub_definitions()
    for name in tl.__all__:
        value = getattr(tl, name)
        if inspect.isbuiltin(value) and isinstance(stubs.get(name), ast.FunctionDef):
            got = stub_parameters(stubs[name])
            # The stubs spell out **options as the keywords they take.
            runtime = [p for p in runtime_parameters(value) if p[1] != "var"]
            assert [p for p in got if p[1] != "var"][: len(runtime)] == runtime, name
