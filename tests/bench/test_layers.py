"""Unit tests of the perf layer breakdown (bench/profiles/layers.py): parsing ``perf script``
text, charging samples to layers, kernel activities and processes, CPU ms per tx, and the
summary table. The text below has the shape ``perf script -F comm,pid,tid,time,ip,sym,dso``
prints on this machine (symbols and objects as perf names them; chains trimmed, addresses
illustrative)."""

from __future__ import annotations

import os

from bench.profiles import layers
from bench.profiles.summary import _layer_lines

SCRIPT = """\
swapper     0/0     100.000000:
\tffffffff81f7a2b5 pv_native_safe_halt+0x5 ([kernel.kallsyms])
\tffffffff81f7a6c9 default_idle+0x9 ([kernel.kallsyms])

python  2130/2135   100.002000:
\t          1d2a3b _PyEval_EvalFrameDefault+0x1b3 (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)
\t          1d0000 PyEval_EvalCode+0x10 (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)

python  2130/2140   100.004000:
\tffffffff81e65f85 process_backlog+0x35 ([kernel.kallsyms])
\tffffffff81e66c3b net_rx_action+0x14b ([kernel.kallsyms])
\tffffffff813600ed handle_softirqs+0xdd ([kernel.kallsyms])
\tffffffff8200e45b tcp_sendmsg+0x2b ([kernel.kallsyms])
\tffffffff81e2f4fb __sys_sendmsg+0x6b ([kernel.kallsyms])
\tffffffff821ecc51 do_syscall_64+0x61 ([kernel.kallsyms])
\t          10ac4d __libc_sendmsg+0x1d (/usr/lib/x86_64-linux-gnu/libc.so.6)

python  2131/2150   100.006000:
\tffffffff81200000 _raw_spin_unlock_irqrestore+0x1d ([kernel.kallsyms])
\tffffffff81200100 try_to_wake_up+0x2a1 ([kernel.kallsyms])
\tffffffff81200200 futex_wake+0x161 ([kernel.kallsyms])
\tffffffff81200300 __x64_sys_futex+0x7b ([kernel.kallsyms])
\t           905f1 sem_post@GLIBC_2.2.5+0x21 (/usr/lib/x86_64-linux-gnu/libc.so.6)

python  2132/2132   100.008000:
\tffffffff81300000 finish_task_switch.isra.0+0x9c ([kernel.kallsyms])
\tffffffff81300100 __schedule+0x3e1 ([kernel.kallsyms])
\tffffffff81300200 irqentry_exit_to_user_mode+0x1a ([kernel.kallsyms])

python  2132/2133   100.010000:
\t           4a1b2 ecdsa_verify+0x22 (/work/main/.venv/lib/python3.11/site-packages/cryptography/hazmat/bindings/_rust.abi3.so)

grpc worker 7  2199/2201   100.012000:
\t           7e1b2 grpc_chttp2_transport+0x22 (/work/main/.venv/lib/python3.11/site-packages/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)

python  2132/2134   100.014000:
\t           11111 [unknown] ([unknown])

perf-exec  2300/2300   100.016000:
\tffffffff8162fc1a kmem_cache_free+0x2a ([kernel.kallsyms])
"""

# odd samples: a kernel module, an unnamed kernel address, a deleted memfd mapping, no chain
ODD = """\
kworker/u8:1-ev  77/77   101.000000:
\tffffffffc0a1b2c3 ext4_writepages+0x33 ([ext4])
\tffffffff81300100 __x64_sys_fdatasync+0x11 ([kernel.kallsyms])

python  2130/2136   101.002000:
\tffffffff81aabbcc [unknown] ([unknown])
\t          10ac4d __libc_write+0x1d (/usr/lib/x86_64-linux-gnu/libc.so.6)

python  2130/2137   101.004000:
\t    7f1795ff8180 [unknown] (/memfd:sealed-91173221a7ea (deleted))

python  2130/2138   101.006000:
"""


def _profile() -> layers.LayerProfile:
    names = {2130: "peer.p01", 2131: "peer.p01 workers", 2132: "orderer.ins01"}
    return layers.profile(layers.parse_script(SCRIPT), names)


def test_parse_script_reads_every_sample_with_its_time_and_chain_leaf_first() -> None:
    samples = list(layers.parse_script(SCRIPT))
    assert [(s.comm, s.pid) for s in samples] == [
        ("swapper", 0), ("python", 2130), ("python", 2130), ("python", 2131), ("python", 2132),
        ("python", 2132), ("grpc worker 7", 2199), ("python", 2132), ("perf-exec", 2300)]
    assert [s.time for s in samples][:2] == [100.0, 100.002]
    tcp = samples[2]
    assert tcp.frames[0] == ("process_backlog", "[kernel.kallsyms]")
    assert tcp.frames[-1] == ("__libc_sendmsg", "/usr/lib/x86_64-linux-gnu/libc.so.6")
    assert len(tcp.frames) == 7
    # perf pads header lines with blanks, and a file may lack the last blank line
    padded = "\n".join(ln + "    " if ln and not ln.startswith("\t") else ln for ln in SCRIPT.splitlines())
    assert list(layers.parse_script(padded)) == samples
    assert list(layers.parse_script(SCRIPT.rstrip("\n"))) == samples


def test_odd_objects_modules_unnamed_kernel_addresses_and_empty_chains() -> None:
    module, unnamed, memfd, empty = layers.parse_script(ODD)
    assert module.comm == "kworker/u8:1-ev" and module.frames[0] == ("ext4_writepages", "[ext4]")
    assert unnamed.frames[0] == ("[unknown]", "[kernel.unknown]")
    assert memfd.frames == (("[unknown]", "/memfd:sealed-91173221a7ea (deleted)"),)
    assert empty.frames == () and empty.time == 101.006
    prof = layers.profile([module, unnamed, memfd, empty], {2130: "peer.p01"})
    assert prof.layers == {layers.KERNEL: 2, layers.OTHER: 2}
    assert prof.kernel == {layers.SYNC: 1, layers.KERNEL_OTHER: 1}
    # kernel rules look at kernel frames only: a user-space symbol named like one is no TCP
    fake = layers.Sample("python", 2130, None, (("[unknown]", "[kernel.unknown]"),
                                                  ("tcp_helper", "/usr/lib/libfoo.so")))
    assert layers.profile([fake], {}).kernel == {layers.KERNEL_OTHER: 1}


def test_layers_by_leaf_object() -> None:
    assert layers.layer_of("/x/lib/libpython3.11.so.1.0") == layers.INTERPRETER
    assert layers.layer_of("[kernel.kallsyms]") == layers.KERNEL
    assert layers.layer_of("/v/site-packages/cryptography/hazmat/bindings/_rust.abi3.so") == layers.CRYPTO
    assert layers.layer_of("/v/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so") == layers.GRPC
    assert layers.layer_of("/v/google/_upb/_message.abi3.so") == layers.PROTOBUF
    assert layers.layer_of("/v/plyvel.libs/libleveldb-e43d8649.so.1.22.0") == layers.LEVELDB
    assert layers.layer_of("/usr/lib/x86_64-linux-gnu/libc.so.6") == layers.LIBC
    assert layers.layer_of("/usr/lib/x86_64-linux-gnu/libcrypto.so.3") == layers.HASHING
    assert layers.layer_of("[unknown]") == layers.OTHER


def test_kernel_samples_are_classified_by_their_whole_chain() -> None:
    # the futex syscall wins over the scheduler work it ends in
    assert layers.kernel_category(["finish_task_switch.isra.0", "__schedule", "futex_wait",
                                   "__x64_sys_futex"]) == layers.FUTEX
    # a send that runs the receiver's softirq is TCP, not interrupt work
    assert layers.kernel_category(["process_backlog", "net_rx_action", "handle_softirqs",
                                   "tcp_sendmsg"]) == layers.TCP
    assert layers.kernel_category(["jbd2_journal_commit", "__x64_sys_fdatasync"]) == layers.SYNC
    assert layers.kernel_category(["pipe_write", "ksys_write"]) == layers.PIPES
    assert layers.kernel_category(["finish_task_switch.isra.0", "__schedule"]) == layers.SCHED
    assert layers.kernel_category(["clear_page_erms", "asm_exc_page_fault"]) == layers.MEMORY
    assert layers.kernel_category(["memcg_slab_free"]) == layers.KERNEL_OTHER


def test_profile_counts_idle_apart_and_shares_are_of_busy_samples() -> None:
    prof = _profile()
    assert (prof.samples, prof.idle, prof.sampler, prof.busy) == (9, 1, 1, 7)  # perf's own apart
    assert (prof.first_t, prof.last_t) == (100.0, 100.016)
    d = prof.as_dict()
    assert d["idle_share"] == round(1 / 9, 4) and d["sampler_share"] == round(1 / 9, 4)
    assert d["layers"] == {layers.KERNEL: round(3 / 7, 4), layers.INTERPRETER: round(1 / 7, 4),
                           layers.CRYPTO: round(1 / 7, 4), layers.GRPC: round(1 / 7, 4),
                           layers.OTHER: round(1 / 7, 4)}
    assert d["kernel"] == {layers.TCP: round(1 / 7, 4), layers.FUTEX: round(1 / 7, 4),
                           layers.SCHED: round(1 / 7, 4)}
    procs = d["by_process"]
    assert isinstance(procs, dict)
    assert procs["orderer.ins01"]["share"] == round(3 / 7, 4)
    assert procs["peer.p01"]["layers"] == {layers.INTERPRETER: 0.5, layers.KERNEL: 0.5}
    assert procs["peer.p01 workers"]["layers"] == {layers.KERNEL: 1.0}
    assert procs["other processes"]["layers"] == {layers.GRPC: 1.0}  # unknown pid 2199


def test_cpu_ms_per_tx_from_busy_samples_and_frequency() -> None:
    prof = _profile()
    d = layers.per_tx(prof, frequency=100, txs=2)
    # 7 busy samples at 100 per CPU-second = 70 ms of CPU over 2 txs
    assert d["busy_cpu_ms_per_tx"] == 35.0
    assert d["layers_ms_per_tx"] == {layers.KERNEL: 15.0, layers.INTERPRETER: 5.0, layers.CRYPTO: 5.0,
                                     layers.GRPC: 5.0, layers.OTHER: 5.0}
    kernel = d["kernel_ms_per_tx"]
    assert isinstance(kernel, dict) and kernel[layers.FUTEX] == 5.0
    assert "busy_cpu_ms_per_tx" not in layers.per_tx(prof, frequency=100, txs=0)


def test_process_names_cover_a_node_and_its_descendants() -> None:
    names = layers.process_names({"me": os.getpid()}, {"client": 1})
    assert names[os.getpid()] == "me"
    assert names[1] == "client"
    assert all(v == "me workers" for k, v in names.items() if k not in (os.getpid(), 1))
    # a process named earlier and gone since (a recycled sandbox worker) keeps its name
    again = layers.process_names({"me": os.getpid()}, {}, {4_000_000: "me workers"})
    assert again[4_000_000] == "me workers" and again[os.getpid()] == "me"


def test_summary_table_and_missing_breakdown() -> None:
    d = {**layers.per_tx(_profile(), frequency=100, txs=2), "tx_per_s": 110.0, "window_s": 12.0,
         "committed_in_window": 2}
    text = "\n".join(_layer_lines(d))
    assert f"| {layers.KERNEL} | 42.9 % | 15.0 |" in text
    assert f"| {layers.FUTEX} | 14.3 % | 5.0 |" in text
    assert "busy CPU 35.0 ms per tx" in text
    assert "not measured: perf is missing" in "\n".join(_layer_lines({"error": "perf is missing"}))
    assert _layer_lines(None) == []


def test_summary_orders_by_share_whatever_the_stored_key_order() -> None:
    d = {"layers": {"a small": 0.1, "b large": 0.6, "c middle": 0.3}, "kernel": {},
         "by_process": {"x": {"share": 0.2, "layers": {"a": 0.1, "b": 0.9}},
                        "y": {"share": 0.8, "layers": {"a": 0.7, "b": 0.3}}}}
    lines = _layer_lines(d)
    rows = [ln.split(" |")[0].lstrip("| ") for ln in lines if ln.startswith("| ") and "%" in ln]
    assert rows == ["b large", "c middle", "a small"]
    by_process = next(ln for ln in lines if ln.startswith("By process"))
    assert by_process.index("y 80.0 % (a 70 %, b 30 %)") < by_process.index("x 20.0 % (b 90 %, a 10 %)")


def test_frames_indented_with_blanks_and_the_lagging_window_note() -> None:
    spaced = SCRIPT.replace("\t", "        ")
    assert [len(s.frames) for s in layers.parse_script(spaced)] == [
        len(s.frames) for s in layers.parse_script(SCRIPT)]
    base = {**layers.per_tx(_profile(), frequency=100, txs=2), "tx_per_s": 110.0, "window_s": 12.0}
    lagging = "\n".join(_layer_lines({**base, "committed_in_window": 2}))
    steady = "\n".join(_layer_lines({**base, "committed_in_window": 1320}))
    assert "(0.2 tx/s)" in lagging and "upper bound" in lagging
    assert "(110.0 tx/s)" in steady and "upper bound" not in steady
