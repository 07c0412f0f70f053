# INA219 bridge for itera on a Raspberry Pi Pico (MicroPython): reads the INA219's raw registers over
# I2C and prints them as checksummed lines on the USB serial port (/dev/ttyACM0 on the host).
# Wire format (docs/energy.md):
#   $INA,<seq>,<t_us>,<shunt>,<bus>,<current>,<power>,<cal>,<rshunt_mohm>*<CK>\r\n
# Wiring: INA219 VCC-3V3(OUT) pin 36, GND-pin 38, SDA-GP4 (pin 6), SCL-GP5 (pin 7);
# the load's supply through VIN+ -> VIN- (high side). Copy this file to the Pico as main.py.
import sys
import time

from machine import I2C, Pin

ADDR = 0x40
PERIOD_US = 10_000  # 100 samples/s
RSHUNT_MOHM = 100  # 0.1 ohm breakout
CALIBRATION = 4096  # Current_LSB = 100 uA with 0.1 ohm: trunc(0.04096 / (1e-4 * 0.1))
CONFIG = 0x399F  # 32 V, PGA /8 (+-320 mV), 12-bit, shunt and bus continuous


def checksum(body):
    ck = 0
    for ch in body:
        ck ^= ord(ch)
    return ck


def format_line(seq, t_us, shunt, bus, current, power, cal):
    body = "INA,%d,%d,%04X,%04X,%04X,%04X,%04X,%d" % (seq, t_us, shunt, bus, current, power, cal, RSHUNT_MOHM)
    return "$%s*%02X\r\n" % (body, checksum(body))


class Ina219:
    def __init__(self, i2c, addr=ADDR):
        self.i2c = i2c
        self.addr = addr

    def write(self, reg, value):
        self.i2c.writeto_mem(self.addr, reg, bytes(((value >> 8) & 0xFF, value & 0xFF)))

    def read(self, reg):
        b = self.i2c.readfrom_mem(self.addr, reg, 2)
        return (b[0] << 8) | b[1]


def main(i2c=None, out=None, samples=None):
    i2c = i2c or I2C(0, sda=Pin(4), scl=Pin(5), freq=400_000)
    out = out or sys.stdout
    chip = Ina219(i2c)
    chip.write(0x00, CONFIG)
    chip.write(0x05, CALIBRATION)
    seq = 0
    t_us = 0  # our own 32-bit microsecond clock: MicroPython's ticks wrap at 2**30, not 2**32
    last = time.ticks_us()
    deadline = last
    while samples is None or seq < samples:
        wait = time.ticks_diff(deadline, time.ticks_us())
        if wait > 0:
            time.sleep_us(wait)
        deadline = time.ticks_add(deadline, PERIOD_US)
        now = time.ticks_us()
        t_us = (t_us + time.ticks_diff(now, last)) & 0xFFFFFFFF
        last = now
        # Bus first: it carries CNVR and OVF for this conversion; reading power clears CNVR.
        bus = chip.read(0x02)
        shunt = chip.read(0x01)
        current = chip.read(0x04)
        power = chip.read(0x03)
        cal = chip.read(0x05)  # read back: a brown-out resets it to 0
        seq = (seq + 1) & 0xFFFFFFFF
        out.write(format_line(seq, t_us, shunt, bus, current, power, cal))


if __name__ == "__main__":
    main()
