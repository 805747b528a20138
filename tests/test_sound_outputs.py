"""Hits and controls through real transports: MIDI over a real JACK server, OSC over a real UDP socket."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from gesture_helpers import cosine_strokes, drum
from support import wait_until

from lalelu.gestures.consumer import GestureConsumer
from lalelu.gestures.mapping import mapping_from_dict
from lalelu.output.midi import MidiOutput
from lalelu.output.osc import OscOutput

pytestmark = pytest.mark.process  # starts servers or `lalelu` processes

rtmidi = pytest.importorskip("rtmidi", reason="python-rtmidi is part of the dev extra")


def receive(midi_in, n: int, timeout: float = 3.0) -> list[tuple[list[int], int]]:
    got = []
    end = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        msg = midi_in.get_message()
        if msg is None:
            time.sleep(0.0005)
            continue
        got.append((msg[0], time.monotonic_ns()))
    return got


PROBE = [0xBF, 3, 0]  # CC 3 (undefined) on channel 16: harmless, and filtered out of the assertions


def wait_connected(out: MidiOutput, midi_in) -> None:
    """JACK connects ports asynchronously: probe until a message gets through, then drain."""

    def probe_arrives() -> bool:
        out._out.send_message(PROBE)
        return bool(receive(midi_in, 1, timeout=0.1))

    wait_until("the JACK MIDI connection", probe_arrives, timeout_s=5, every_s=0)
    while receive(midi_in, 1, timeout=0.05):
        pass


def test_hits_arrive_as_exact_midi_bytes_through_jack(jack_server):
    midi_in = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="receiver")
    midi_in.open_virtual_port("drum-module")
    out = MidiOutput(port="drum-module", api="jack")
    wait_connected(out, midi_in)
    mapping = mapping_from_dict(
        {
            "instrument": {"channel": 10, "note_length_ms": 30},
            "strike": [{"name": "hand", "keypoint": "right_wrist", "note": "snare", "velocity": [100, 101]}],
            "control": [{"name": "mod", "keypoint": "left_wrist", "cc": 1}],
        }
    )
    consumer = GestureConsumer(mapping, out, 320, 240)
    drum(consumer_as_engine(consumer), 0.5, cosine_strokes(0.5, 0.2))  # one stroke
    time.sleep(0.05)
    consumer.on_pose(10_000, time.monotonic_ns(), still_pose())  # lets the note-off come due
    consumer.close()
    messages = [m for m, _ in receive(midi_in, 40, timeout=2.0)]
    note_on = [m for m in messages if m[0] == 0x99]
    note_off = [m for m in messages if m[0] == 0x89]
    cc1 = [m for m in messages if m[0] == 0xB9 and m[1] == 1]
    assert len(note_on) == 1 and note_on[0][1] == 38 and note_on[0][2] in (100, 101)
    assert note_off[0] == [0x89, 38, 0]
    assert cc1 and all(0 <= m[2] <= 127 for m in cc1)
    assert [0xB9, 123, 0] in messages  # all notes off on close
    midi_in.close_port()


def test_note_on_latency_through_jack(jack_server):
    midi_in = rtmidi.MidiIn(rtapi=rtmidi.API_UNIX_JACK, name="latency-rx")
    midi_in.open_virtual_port("latency-in")
    out = MidiOutput(port="latency-in", api="jack")
    wait_connected(out, midi_in)
    latencies, lost = [], 0
    for i in range(40):
        sent = time.monotonic_ns()
        out.note_on(10, 36 + i % 4, 100, "probe")
        got = receive(midi_in, 1, timeout=0.5)
        while got and got[0][0][1] != 36 + i % 4:  # an earlier note, later than 0.5 s: counted already
            got = receive(midi_in, 1, timeout=0.5)
        if not got:
            # Seen here about once in 150 spaced notes with python-rtmidi 1.5.8 on jackd2 1.9 (dummy
            # driver, non-realtime, asynchronous: xruns; conftest now runs it --sync), and on a loaded
            # machine notes later than 0.5 s: counted as lost and reported, not hidden. See docs/performance.md.
            lost += 1
            continue
        assert got[0][0] == [0x99, 36 + i % 4, 100]
        latencies.append(got[0][1] - sent)
        time.sleep(0.005)
    out.close()
    midi_in.close_port()
    print(
        f"JACK note-on latency p50 {np.median(latencies) / 1e6:.2f} ms, max {max(latencies) / 1e6:.2f} ms, "
        f"lost {lost} of 40"
    )
    assert lost <= 2
    assert np.median(latencies) < 20e6  # a few periods of 128 frames at 48 kHz (2.67 ms each)


def test_missing_port_names_the_available_ones(jack_server):
    with pytest.raises(Exception, match="no MIDI output port contains 'nonexistent'"):
        MidiOutput(port="nonexistent", api="jack")


def test_osc_hits_reach_a_udp_socket():
    from pythonosc.osc_message import OscMessage

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(2)
        out = OscOutput("127.0.0.1", rx.getsockname()[1], prefix="/drums")
        out.note_on(10, 42, 90, "hihat")
        out.control(10, "cc", 1, 64, "mod")
        first, second = OscMessage(rx.recv(1024)), OscMessage(rx.recv(1024))
    assert (first.address, first.params) == ("/drums/hit", ["hihat", 42, 90])
    assert (second.address, second.params) == ("/drums/control", ["mod", 64])


def still_pose() -> np.ndarray:
    kp = np.zeros((17, 3), np.float32)
    kp[:, 2] = 0.9
    return kp


class consumer_as_engine:
    def __init__(self, consumer: GestureConsumer) -> None:
        self.consumer = consumer
        self.seq = 0

    def update(self, t_ns: int, kp: np.ndarray) -> None:
        kp = kp.copy()
        kp[7] = (50.0, 120.0 + self.seq % 50, 0.9)  # left wrist drifting: controls
        self.seq += 1
        self.consumer.on_pose(self.seq, t_ns, kp)
