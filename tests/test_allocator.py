"""scripts/env.sh chooses the memory allocator of every script (MOLRECIPES_ALLOCATOR), falling back
silently to the system allocator where the preload library is absent (CI machines)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOW = 'echo "used=$MOLRECIPES_ALLOCATOR_USED preload=${LD_PRELOAD:-} mmap_max=${MALLOC_MMAP_MAX_:-}"'


def sourced(command: str, **env):
    """(stdout, stderr, exit code) of ``command`` run after sourcing scripts/env.sh under ``env``."""
    full = {k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith(("MOLRECIPES_ALLOCATOR", "MALLOC_", "TCMALLOC_"))}
    full.update(env)
    out = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/env.sh" && {command}'], env=full,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip(), out.stderr, out.returncode


@pytest.mark.parametrize("allocator", ["jemalloc", "tcmalloc", None])
def test_absent_library_falls_back_silently_to_the_system_allocator(tmp_path, allocator):
    env = {"MOLRECIPES_LIB_PATH": str(tmp_path)}  # an empty library directory: nothing to preload
    if allocator:
        env["MOLRECIPES_ALLOCATOR"] = allocator
    stdout, stderr, code = sourced(SHOW, **env)
    assert (stdout, stderr, code) == ("used=system preload= mmap_max=", "", 0)


def test_found_library_is_preloaded_before_the_callers(tmp_path):
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    stdout, _, _ = sourced(SHOW, MOLRECIPES_LIB_PATH=f"/nonexistent:{tmp_path}", MOLRECIPES_ALLOCATOR="tcmalloc",
                           LD_PRELOAD="/opt/other.so")
    assert stdout == f"used=tcmalloc preload={tmp_path}/libtcmalloc_minimal.so.4:/opt/other.so mmap_max="
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    stdout, _, _ = sourced(SHOW, MOLRECIPES_LIB_PATH=str(tmp_path), MOLRECIPES_ALLOCATOR="jemalloc")
    assert stdout == f"used=jemalloc preload={tmp_path}/libjemalloc.so.2 mmap_max="
    stdout, _, _ = sourced(SHOW, MOLRECIPES_LIB_PATH=str(tmp_path))  # the default
    assert stdout == f"used=tcmalloc preload={tmp_path}/libtcmalloc_minimal.so.4 mmap_max="


def test_system_and_glibc_settings_and_a_bad_name(tmp_path):
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert sourced(SHOW, MOLRECIPES_LIB_PATH=str(tmp_path), MOLRECIPES_ALLOCATOR="system")[0] == \
        "used=system preload= mmap_max="
    assert sourced(SHOW, MOLRECIPES_ALLOCATOR="glibc")[0] == "used=glibc preload= mmap_max=0"
    stdout, stderr, code = sourced(SHOW, MOLRECIPES_ALLOCATOR="jemaloc")
    assert code == 2 and stdout == "" and stderr.startswith("error: MOLRECIPES_ALLOCATOR=jemaloc")


def test_the_default_allocator_is_loaded_where_installed():
    stdout, _, _ = sourced(SHOW)
    if "used=tcmalloc" not in stdout:
        pytest.skip("libtcmalloc-minimal4 is not installed here (the scripts then use the system allocator)")
    maps, _, _ = sourced(f'{sys.executable} -c "print(open(\'/proc/self/maps\').read())"')
    assert "libtcmalloc" in maps


def test_allocator_comparison_reports_ratios_to_the_first():
    bench = ("import os, json; print('BENCH ' + json.dumps({'source': os.environ['MOLRECIPES_ROOT'], "
             "'step_ms': 2.0 if os.environ['MOLRECIPES_ALLOCATOR_USED'] == 'glibc' else 4.0}))")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_harness.py"), "--allocators", "system,glibc",
                          "--rounds", "2", "--", sys.executable, "-c", bench], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "| step_ms | 4 | 2 (0.500, 0.500) |" in out.splitlines()


def test_a_script_started_by_a_script_replaces_the_parents_choice(tmp_path):
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    child = f'MOLRECIPES_ALLOCATOR=system bash -c \'source "{ROOT}/scripts/env.sh" && {SHOW}\''
    stdout, _, _ = sourced(child, MOLRECIPES_LIB_PATH=str(tmp_path), LD_PRELOAD="/opt/other.so")
    assert stdout == "used=system preload=/opt/other.so mmap_max="
    child = f'MOLRECIPES_ALLOCATOR=jemalloc bash -c \'source "{ROOT}/scripts/env.sh" && {SHOW}\''
    stdout, _, _ = sourced(child, MOLRECIPES_LIB_PATH=str(tmp_path), MOLRECIPES_ALLOCATOR="glibc")
    assert stdout == f"used=jemalloc preload={tmp_path}/libjemalloc.so.2 mmap_max="


def test_openmp_workers_sleep_unless_the_caller_chose():
    """env.sh makes waiting OpenMP workers sleep (PASSIVE) and keeps a policy the caller set; torch's
    OpenMP runtime reads it (libgomp lists its settings under OMP_DISPLAY_ENV)."""
    show = 'echo "policy=$OMP_WAIT_POLICY"'
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(["bash", "-c", f'source "{ROOT}/scripts/env.sh" && {show}'], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "policy=PASSIVE"
    assert sourced(show, OMP_WAIT_POLICY="ACTIVE")[0] == "policy=ACTIVE"
    _, stderr, code = sourced(f'{sys.executable} -c "import torch; torch.ones(1)"', OMP_DISPLAY_ENV="TRUE",
                              OMP_WAIT_POLICY="")       # empty counts as not set
    if "OMP_WAIT_POLICY" not in stderr:
        pytest.skip("this torch's OpenMP runtime does not list its settings (not libgomp)")
    assert code == 0 and "OMP_WAIT_POLICY = 'PASSIVE'" in stderr
