// The Wire (I2C) library, talking to the emulated INA219 of ina219_chip.h.
#pragma once
#include "Arduino.h"
#include "ina219_chip.h"

struct TwoWire {
  uint8_t pointer = 0, written = 0, buf[3] = {0, 0, 0}, rx[2] = {0, 0}, rxPos = 2;
  void begin() {}
  void beginTransmission(uint8_t) { written = 0; }
  void write(uint8_t b) {
    if (written < 3) buf[written] = b;
    written++;
  }
  uint8_t endTransmission() {
    pointer = buf[0];
    if (written == 3 && (pointer == 0 || pointer == 5)) chip.regs[pointer] = (uint16_t)((buf[1] << 8) | buf[2]);
    return 0;
  }
  uint8_t requestFrom(uint8_t, uint8_t n) {
    uint16_t v = chip.regs[pointer % 6];
    rx[0] = v >> 8;
    rx[1] = v & 0xFF;
    rxPos = 0;
    return n;
  }
  int read() { return rxPos < 2 ? rx[rxPos++] : -1; }
};
extern TwoWire Wire;
