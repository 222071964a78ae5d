"""The package's import graph: the product never imports the experiment tooling, and no two modules import
each other, directly or round a circle (function-level imports included, which hide circles at import time)."""
import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rnca_nnunet")


def imports() -> dict:
    """module name -> the rnca_nnunet modules it imports anywhere in its source."""
    graph = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                name = "rnca_nnunet." + os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
                name = name[: -len(".__init__")] if name.endswith(".__init__") else name
                found = set()
                for node in ast.walk(ast.parse(open(path).read())):
                    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rnca_nnunet"):
                        found.add(node.module)
                    elif isinstance(node, ast.Import):
                        found |= {a.name for a in node.names if a.name.startswith("rnca_nnunet")}
                graph[name] = found - {name}
    return graph


def test_the_product_never_imports_the_experiment_tooling():
    offenders = {m: sorted(i for i in found if i.startswith("rnca_nnunet.experiments"))
                 for m, found in imports().items() if not m.startswith("rnca_nnunet.experiments")}
    assert not {m: i for m, i in offenders.items() if i}


def test_no_module_imports_round_a_circle():
    graph = imports()
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            if state.get(other) == "open":
                circles.append(path[path.index(other):] + [other])
            elif other in graph and other not in state:
                visit(other, path + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
