// INA219 bridge for itera: reads the INA219's raw registers over I2C and prints them as checksummed
// lines on the serial port, for `itera-agent bench --meter ina219 --port /dev/ttyACM0`.
// Wire format (docs/energy.md):
//   $INA,<seq>,<t_us>,<shunt>,<bus>,<current>,<power>,<cal>,<rshunt_mohm>*<CK>\r\n
// seq and t_us decimal (uint32, wrapping), registers as 4 hex digits, CK = XOR of the bytes between
// '$' and '*' (as NMEA 0183). The host converts with the datasheet math; nothing is converted here.
//
// Wiring (Arduino Uno/Nano): INA219 VCC-5V, GND-GND, SDA-A4, SCL-A5; the load's supply through
// VIN+ -> VIN- (high side). Any board with Wire works (Leonardo: SDA 2, SCL 3; ESP32: 21/22).

#include <Wire.h>

static const uint8_t INA219_ADDR = 0x40;   // A0 = A1 = GND
static const unsigned long BAUD = 115200;
static const uint32_t PERIOD_US = 10000;  // 100 samples/s (a line is ~60 bytes: < 200/s fit at 115200)
static const unsigned int RSHUNT_MOHM = 100;   // 0.1 ohm, as on the Adafruit and most breakouts
// Current_LSB = 100 uA: Cal = trunc(0.04096 / (0.0001 A * 0.1 ohm)) = 4096 -> up to 3.2 A.
static const uint16_t CALIBRATION = 4096;
// 32 V bus range, PGA /8 (+-320 mV shunt), 12-bit ADCs (532 us each), shunt and bus continuous.
static const uint16_t CONFIG = 0x399F;

static uint32_t seq = 0;
static uint32_t nextSample = 0;  // micros() is 32 bits: it wraps every 71.6 minutes

static void writeRegister(uint8_t reg, uint16_t value) {
  Wire.beginTransmission(INA219_ADDR);
  Wire.write(reg);
  Wire.write((uint8_t)(value >> 8));
  Wire.write((uint8_t)(value & 0xFF));
  Wire.endTransmission();
}

static uint16_t readRegister(uint8_t reg) {
  Wire.beginTransmission(INA219_ADDR);
  Wire.write(reg);
  Wire.endTransmission();
  Wire.requestFrom(INA219_ADDR, (uint8_t)2);
  uint16_t hi = Wire.read();
  uint16_t lo = Wire.read();
  return (uint16_t)((hi << 8) | lo);
}

void setup() {
  Serial.begin(BAUD);
  Wire.begin();
  writeRegister(0x00, CONFIG);
  writeRegister(0x05, CALIBRATION);
  nextSample = micros();
}

void loop() {
  if ((int32_t)(micros() - nextSample) < 0) return;
  nextSample += PERIOD_US;
  uint32_t t = micros();
  // Bus first: it carries CNVR and OVF for this conversion; reading power clears CNVR.
  uint16_t bus = readRegister(0x02);
  uint16_t shunt = readRegister(0x01);
  uint16_t current = readRegister(0x04);
  uint16_t power = readRegister(0x03);
  // Read back, not assumed: a brown-out resets it to 0, and the host must then use shunt / R.
  uint16_t cal = readRegister(0x05);
  seq++;
  char body[72];
  int n = snprintf(body, sizeof body, "INA,%lu,%lu,%04X,%04X,%04X,%04X,%04X,%u", (unsigned long)seq,
                   (unsigned long)t, shunt, bus, current, power, cal, RSHUNT_MOHM);
  uint8_t ck = 0;
  for (int i = 0; i < n; i++) ck ^= (uint8_t)body[i];
  char tail[6];
  snprintf(tail, sizeof tail, "*%02X\r\n", ck);
  Serial.print('$');
  Serial.print(body);
  Serial.print(tail);
}
