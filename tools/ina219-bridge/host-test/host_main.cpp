// Runs the Arduino bridge sketch on a PC against the emulated INA219: the load steps from 0.5 A to
// 1.5 A at 5 V every 10 samples. Usage: host_bridge <samples>
#include "Arduino.h"
#include "Wire.h"
#include "../arduino/ina219-bridge/ina219-bridge.ino"

uint32_t simulatedMicros = 4294000000UL;  // close to the 32-bit wrap, on purpose
HardwareSerial Serial;
TwoWire Wire;
Ina219Chip chip;

int main(int argc, char **argv) {
  unsigned long samples = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 50;
  setup();
  uint32_t last = 0;
  while (seq < samples) {
    chip.setLoad((seq / 10) % 2 ? 1.5 : 0.5, 5.0);
    loop();
    if (seq != last) {
      last = seq;
      std::fflush(stdout);
    }
  }
  return 0;
}
