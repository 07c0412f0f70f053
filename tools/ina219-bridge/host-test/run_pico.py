"""Run the Pico bridge (../pico/main.py) under CPython against an emulated INA219.

MicroPython's `machine` module and `time.ticks_*` are stubbed; the chip follows the datasheet
(Current = Shunt * Cal / 4096, Power = Current * Bus / 5000). The load steps between 0.5 A and
1.5 A at 5 V every 10 samples. Usage: run_pico.py <samples>
"""
import os
import sys
import time
import types

TICKS_PERIOD = 1 << 30  # MicroPython's ticks wrap here
clock = [TICKS_PERIOD - 20_000]  # start near the wrap, on purpose


def ticks_us():
    clock[0] = (clock[0] + 137) % TICKS_PERIOD
    return clock[0]


def ticks_diff(a, b):
    return ((a - b + TICKS_PERIOD // 2) % TICKS_PERIOD) - TICKS_PERIOD // 2


time.ticks_us = ticks_us
time.ticks_diff = ticks_diff
time.ticks_add = lambda a, d: (a + d) % TICKS_PERIOD
time.sleep_us = lambda us: clock.__setitem__(0, (clock[0] + us) % TICKS_PERIOD)


class Chip:
    def __init__(self):
        self.regs = [0x399F, 0, 0, 0, 0, 0]
        self.reads = 0

    def load(self, amps, volts):
        shunt = int(round(amps * 0.1 / 10e-6))
        bus = int(round(volts / 0.004))
        current = int(shunt * self.regs[5] / 4096)
        self.regs[1] = shunt & 0xFFFF
        self.regs[2] = (bus << 3) | 0x2
        self.regs[4] = current & 0xFFFF
        self.regs[3] = (abs(current) * bus // 5000) & 0xFFFF


chip = Chip()


class I2C:
    def __init__(self, *args, **kwargs):
        pass

    def writeto_mem(self, addr, reg, data):
        if reg in (0, 5):
            chip.regs[reg] = (data[0] << 8) | data[1]

    def readfrom_mem(self, addr, reg, n):
        if reg == 2:  # the bridge reads the bus register first in each sample
            chip.load(1.5 if (chip.reads // 10) % 2 else 0.5, 5.0)
            chip.reads += 1
        v = chip.regs[reg]
        return bytes(((v >> 8) & 0xFF, v & 0xFF))


machine = types.ModuleType("machine")
machine.I2C = I2C
machine.Pin = lambda *a, **k: None
sys.modules["machine"] = machine
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pico"))

import main  # noqa: E402  (the Pico's main.py, imported after the stubs)

main.main(samples=int(sys.argv[1]) if len(sys.argv) > 1 else 50)
