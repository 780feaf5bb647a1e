"""The package's shape: no import circle anywhere in ssl_jax/, function-level imports included."""

import ast
import os

from conftest import ROOT


def import_graph() -> dict:
  """{module: {ssl_jax modules it imports anywhere in its file}}; `from ssl_jax.x import y`
  counts as importing ssl_jax.x.y when that is a module, else ssl_jax.x."""
  modules = {}
  for folder, _, names in os.walk(os.path.join(ROOT, 'ssl_jax')):
    for name in names:
      if name.endswith('.py'):
        dotted = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].replace(os.sep, '.')
        modules[dotted.removesuffix('.__init__')] = os.path.join(folder, name)
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        found.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        found.update(f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules else node.module
                     for a in node.names)
    graph[module] = {m for m in found if m in modules and m != module}
  return graph


def cycles(graph: dict) -> list:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_no_import_circle_in_the_package():
  graph = import_graph()
  assert {'ssl_jax.trainer', 'ssl_jax.convert.command', 'ssl_jax.finetune.sources'} <= set(graph)
  assert 'ssl_jax.convert.files' in graph['ssl_jax.finetune.best']      # function and module level alike
  assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_file_of_the_package_is_over_400_lines():
  long = {}
  for folder, _, names in os.walk(os.path.join(ROOT, 'ssl_jax')):
    for name in names:
      if name.endswith('.py'):
        with open(os.path.join(folder, name)) as f:
          lines = sum(1 for _ in f)
        if lines > 410:   # ~400: a docstring's worth of slack
          long[os.path.relpath(os.path.join(folder, name), ROOT)] = lines
  assert long == {}


def test_the_readmes_layout_names_every_module_and_experiment():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  layout = readme[readme.index('## Layout'):]
  layout = layout[:layout.index('```', layout.index('```') + 3)]
  missing = []
  for top in ('ssl_jax', 'experiments'):
    for folder, _, names in os.walk(os.path.join(ROOT, top)):
      for name in names:
        if name.endswith('.py') and name != '__init__.py' and name not in layout:
          missing.append(os.path.relpath(os.path.join(folder, name), ROOT))
  assert missing == []


def test_the_tasks_which_the_config_reads_never_reach_the_config():
  """config.base_config() imports every task module (by name, for their settings): a task that
  reached ssl_jax.config, directly or through what it imports, would close a circle that the
  static graph above cannot see."""
  graph = import_graph()

  def reached(start):
    seen, todo = set(), [start]
    while todo:
      for module in graph[todo.pop()]:
        if module not in seen:
          seen.add(module)
          todo.append(module)
    return seen

  assert 'ssl_jax.tasks' in graph['ssl_jax.config']
  task_modules = [m for m in graph if m.startswith('ssl_jax.tasks.')]
  assert len(task_modules) >= 10
  assert [m for m in task_modules if 'ssl_jax.config' in reached(m)] == []
