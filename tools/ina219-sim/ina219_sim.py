#!/usr/bin/env python3
"""INA219 bridge simulator: prints what a real bridge would, from a known power trace.

It writes to stdout (run it under socat to get a real pseudo-terminal):

    socat PTY,link=/tmp/ina219,raw,echo=0 EXEC:"python3 tools/ina219-sim/ina219_sim.py --format raw --trace trace.csv"

The trace is piecewise linear: a CSV of `t_s,watts` points (held constant after the last point), or
inline as `--trace "0:4,1:4,3:8"`. The chip is modelled register by register (datasheet formulas:
Current = Shunt * Cal / 4096, Power = Current * Bus / 5000), so the raw format carries the same
quantisation as the real part. Independent of the TypeScript decoder on purpose: it checks it.
"""
import argparse
import json
import math
import os
import random
import sys
import time

FORMATS = ["raw", "csv", "csv-noheader", "space", "json", "adafruit", "garbage"]


def load_trace(spec):
    if os.path.exists(spec):
        with open(spec) as f:
            rows = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        pts = [tuple(float(x) for x in r.split(",")[:2]) for r in rows if not r[0].isalpha()]
    else:
        pts = [tuple(float(x) for x in p.split(":")) for p in spec.split(",")]
    pts.sort()
    if not pts:
        sys.exit("empty trace")
    return pts


def power_at(pts, t):
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, p0), (t1, p1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return p0 if t1 == t0 else p0 + (p1 - p0) * (t - t0) / (t1 - t0)
    return pts[-1][1]


def registers(watts, bus_v, rshunt, cal):
    """Registers an INA219 would hold for this load (32 V range, PGA /8)."""
    amps = watts / bus_v
    shunt = int(round(amps * rshunt / 10e-6))
    shunt = max(-32000, min(32000, shunt))
    bus = int(round(bus_v / 0.004)) & 0x1FFF
    current = int(shunt * cal / 4096)
    overflow = abs(current) > 32767
    current = max(-32768, min(32767, current))
    power = int(abs(current) * bus / 5000) & 0xFFFF
    bus_reg = (bus << 3) | 0x2 | (1 if overflow else 0)
    return shunt & 0xFFFF, bus_reg, current & 0xFFFF, power, overflow


def checksum(body):
    ck = 0
    for ch in body.encode("ascii"):
        ck ^= ch
    return ck


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=FORMATS, default="raw")
    ap.add_argument("--trace", default="0:5", help="CSV file of t_s,watts or inline t:w,t:w,...")
    ap.add_argument("--rate", type=float, default=50.0, help="samples per second")
    ap.add_argument("--duration", type=float, default=0, help="seconds, then exit (closes the pty); 0 = forever")
    ap.add_argument("--bus-v", type=float, default=5.0)
    ap.add_argument("--rshunt", type=float, default=0.1, help="shunt resistor, ohm")
    ap.add_argument("--current-lsb", type=float, default=100e-6, help="A per LSB chosen by the firmware")
    ap.add_argument("--garbage-every", type=int, default=0, help="insert a garbage line every N samples")
    ap.add_argument("--bad-checksum-every", type=int, default=0, help="raw: corrupt the checksum every N samples")
    ap.add_argument("--drop-every", type=int, default=0, help="raw: skip a sequence number every N samples")
    ap.add_argument("--start-file", help="write the epoch time (s) of the trace's t=0 here")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    rng = random.Random(a.seed)
    pts = load_trace(a.trace)
    cal = int(0.04096 / (a.current_lsb * a.rshunt))
    out = sys.stdout.buffer
    start_mono = time.monotonic()
    if a.start_file:
        with open(a.start_file + ".tmp", "w") as f:
            f.write(repr(time.time() - (time.monotonic() - start_mono)))
        os.replace(a.start_file + ".tmp", a.start_file)

    def emit(text):
        out.write(text.encode("latin1"))
        out.flush()

    if a.format == "csv":
        emit("time_ms,bus_V,shunt_mV,current_mA,power_mW\r\n")
    if a.format == "adafruit":
        emit("Hello!\r\nMeasuring voltage and current with INA219 ...\r\n")

    seq = 0
    n = 0
    period = 1.0 / a.rate
    while True:
        target = start_mono + n * period
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        t = time.monotonic() - start_mono
        if a.duration and t > a.duration:
            break
        n += 1
        if a.format == "garbage":
            # What 8N1 text sent at 9600 baud looks like to a UART at 115200: mostly 0x80/0xF8-ish bytes.
            emit(bytes(rng.choice([0x80, 0xF8, 0xFE, 0x00, 0xE0, 0x1C, 0xFC]) for _ in range(12)).decode("latin1"))
            continue
        watts = power_at(pts, t)
        shunt, bus_reg, current, power, ovf = registers(watts, a.bus_v, a.rshunt, cal)
        t_ms = t * 1000.0
        amps = watts / a.bus_v
        if a.garbage_every and n % a.garbage_every == 0:
            emit("#%$ garbage \x07\x1b line 12,34,,\r\n")
        if a.format == "raw":
            seq = (seq + 1) & 0xFFFFFFFF
            if a.drop_every and n % a.drop_every == 0:
                continue
            t_us = int(t * 1e6) & 0xFFFFFFFF
            body = "INA,%d,%d,%04X,%04X,%04X,%04X,%04X,%d" % (
                seq, t_us, shunt, bus_reg, current, power, cal, round(a.rshunt * 1000))
            ck = checksum(body)
            if a.bad_checksum_every and n % a.bad_checksum_every == 0:
                ck ^= 0x5A
            emit("$%s*%02X\r\n" % (body, ck))
        elif a.format in ("csv", "csv-noheader"):
            emit("%.3f,%.3f,%.4f,%.3f,%.3f\r\n" % (t_ms, a.bus_v, amps * a.rshunt * 1000, amps * 1000, watts * 1000))
        elif a.format == "space":
            emit("%d %.3f %.4f %.3f %.3f\n" % (int(t * 1e6), a.bus_v, amps * a.rshunt * 1000, amps * 1000, watts * 1000))
        elif a.format == "json":
            emit(json.dumps({"t_us": int(t * 1e6), "bus_V": a.bus_v, "current_mA": round(amps * 1000, 4),
                             "power_mW": round(watts * 1000, 4)}) + "\n")
        elif a.format == "adafruit":
            shunt_mv = amps * a.rshunt * 1000
            emit("Bus Voltage:   %.2f V\r\nShunt Voltage: %.2f mV\r\nLoad Voltage:  %.2f V\r\n"
                 "Current:       %.2f mA\r\nPower:         %.2f mW\r\n\r\n"
                 % (a.bus_v, shunt_mv, a.bus_v + shunt_mv / 1000, amps * 1000, watts * 1000))
        del ovf  # the OVF bit is already in bus_reg


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
