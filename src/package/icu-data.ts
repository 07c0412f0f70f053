/**
 * English-only ICU data inside the official Node binary. Node's official builds embed full ICU: one
 * ICU "common data" package (the symbol `icudt<N>_dat`, 33 MB) that ICU reads through its table of
 * contents. This module finds the package in an ELF binary by its symbol, and writes over it, in
 * place, a smaller valid package holding every item that is not locale data plus the locale data of
 * root and en*, as Node's small-icu builds do; the rest of the region is zero-filled, so it
 * compresses to nothing. The binary keeps its layout: nothing moves, only bytes of `.rodata` change.
 *
 * The package format (ICU's udata.h / ucmndata.h): a DataHeader (uint16 headerSize, magic 0xda 0x27,
 * UDataInfo with dataFormat "CmnD", formatVersion 1), then, at headerSize, the table of contents:
 * uint32 count and count pairs of uint32 (nameOffset, dataOffset), both relative to the table's
 * start, then the NUL-terminated item names ("icudt78l/coll/en.res"), sorted (ICU binary-searches
 * them), then the items, each 16-byte aligned. ICU takes an item's length as the distance to the
 * next item's offset, so each kept item keeps the length it had.
 */

export interface IcuItem {
  /** Without the package prefix: "en.res", "coll/root.res", "brkitr/cjdict.dict". */
  name: string;
  /** The name as stored: "icudt78l/en.res". */
  fullName: string;
  /** Offset of the item in the package. */
  offset: number;
  /** Bytes up to the next item (or the package's end): what ICU takes as its length. */
  length: number;
}

export interface IcuTrim {
  symbol: string;
  /** Offset of the package in the file, and its size. */
  fileOffset: number;
  bytes: number;
  /** Bytes of the package after trimming (the rest of `bytes` is now zeros). */
  keptBytes: number;
  items: number;
  keptItems: number;
}

const ITEM_ALIGN = 16;

/** Changes whenever keepIcuItem keeps other items: a binary trimmed by another policy is made again. */
export const ICU_TRIM_POLICY = "root+en/2";

/**
 * Trees (sub-folders) whose .res files are per-locale bundles; "" is the package's top level.
 * brkitr/ is not one of them: its few locale bundles (15 kB) are break exceptions, and ICU's CJK
 * word-break engine reads brkitr/ja.res whatever the locale (without it Chinese and Japanese text
 * is one word).
 */
const LOCALE_TREES = new Set(["", "coll", "curr", "lang", "rbnf", "region", "unit", "zone", "translit"]);
/**
 * A locale bundle's name: root, or language[_script][_region][_variant] ("en", "sr_Latn_BA",
 * "es_419", and aliases with empty parts such as coll/de__PHONEBOOK).
 */
const LOCALE_NAME = /^(root|[a-z]{2,3}(_[A-Za-z0-9]*)*)\.res$/;
/** .res files in locale trees that are not locale bundles. */
const NOT_LOCALES = new Set(["res_index.res", "pool.res"]);

/**
 * Whether an English-only Node keeps an item: everything that is not locale data (NFKC and UTS #46
 * normalization, character names, emoji and layout properties, stringprep, converters and their
 * aliases, break rules and dictionaries, time zones, supplemental data, collation's root tables,
 * each tree's index and pool; the core properties, case mapping, bidi and NFC are compiled into
 * ICU's code, not in the package), and of the locale bundles, root and en* only. Transliteration (translit/) goes whole: neither V8 nor Node uses
 * ICU's transliterator.
 */
export function keepIcuItem(name: string): boolean {
  const slash = name.lastIndexOf("/");
  const tree = slash < 0 ? "" : name.slice(0, slash);
  const base = name.slice(slash + 1);
  if (tree === "translit") return false;
  if (!LOCALE_TREES.has(tree) || NOT_LOCALES.has(base) || !LOCALE_NAME.test(base)) return true;
  const locale = base.slice(0, -".res".length);
  return locale === "root" || locale === "en" || locale.startsWith("en_");
}

/** The ICU common-data package's items, checked against the format; throws on anything else. */
export function readCommonData(pkg: Buffer): { headerSize: number; items: IcuItem[] } {
  if (pkg.length < 32) throw new Error("too short for an ICU data header");
  const headerSize = pkg.readUInt16LE(0);
  if (pkg[2] !== 0xda || pkg[3] !== 0x27) throw new Error("no ICU data header (magic 0xda27)");
  // UDataInfo at 4: size, reserved, isBigEndian (8), charsetFamily, sizeofUChar, reserved, dataFormat (12).
  if (pkg[8] !== 0) throw new Error("big-endian ICU data");
  const format = pkg.toString("latin1", 12, 16);
  if (format !== "CmnD" || pkg[16] !== 1)
    throw new Error(`not an ICU common-data package (${format} v${pkg[16]})`);
  if (headerSize % ITEM_ALIGN !== 0 || headerSize + 4 > pkg.length)
    throw new Error(`bad header size ${headerSize}`);
  const toc = headerSize;
  const count = pkg.readUInt32LE(toc);
  if (count === 0 || toc + 4 + count * 8 > pkg.length) throw new Error(`bad item count ${count}`);
  const items: IcuItem[] = [];
  let prefix: string | undefined;
  for (let i = 0; i < count; i++) {
    const nameAt = toc + pkg.readUInt32LE(toc + 4 + i * 8);
    const offset = toc + pkg.readUInt32LE(toc + 8 + i * 8);
    const end = pkg.indexOf(0, nameAt);
    if (nameAt >= pkg.length || end < 0 || offset >= pkg.length)
      throw new Error(`item ${i} lies outside the package`);
    const fullName = pkg.toString("latin1", nameAt, end);
    const slash = fullName.indexOf("/");
    prefix ??= fullName.slice(0, slash + 1);
    if (slash < 0 || fullName.slice(0, slash + 1) !== prefix)
      throw new Error(`item ${fullName} is outside ${prefix}`);
    const previous = items[i - 1];
    if (previous && (previous.fullName >= fullName || previous.offset >= offset)) {
      throw new Error(`items out of order at ${fullName}`);
    }
    if (offset % ITEM_ALIGN !== 0) throw new Error(`item ${fullName} is not ${ITEM_ALIGN}-byte aligned`);
    items.push({ name: fullName.slice(slash + 1), fullName, offset, length: 0 });
  }
  items.forEach((item, i) => {
    item.length = (items[i + 1]?.offset ?? pkg.length) - item.offset;
  });
  return { headerSize, items };
}

/**
 * A package of the same size holding only the items `keep` accepts, zero-filled after them. Items
 * keep their order (names stay sorted), their bytes and their lengths; the header is copied.
 */
export function trimCommonData(
  pkg: Buffer,
  keep: (name: string) => boolean = keepIcuItem,
): { data: Buffer; items: number; keptItems: number; keptBytes: number } {
  const { headerSize, items } = readCommonData(pkg);
  const kept = items.filter((item) => keep(item.name));
  const names = kept.map((item) => Buffer.from(`${item.fullName}\0`, "latin1"));
  const out = Buffer.alloc(pkg.length);
  pkg.copy(out, 0, 0, headerSize);
  const toc = headerSize;
  out.writeUInt32LE(kept.length, toc);
  let nameAt = 4 + kept.length * 8; // relative to the table of contents
  let dataAt = align(toc + nameAt + names.reduce((n, b) => n + b.length, 0)); // absolute, in the package
  kept.forEach((item, i) => {
    out.writeUInt32LE(nameAt, toc + 4 + i * 8);
    out.writeUInt32LE(dataAt - toc, toc + 8 + i * 8);
    names[i]!.copy(out, toc + nameAt);
    nameAt += names[i]!.length;
    pkg.copy(out, dataAt, item.offset, item.offset + item.length);
    dataAt += item.length;
  });
  return { data: out, items: items.length, keptItems: kept.length, keptBytes: dataAt };
}

function align(n: number): number {
  return Math.ceil(n / ITEM_ALIGN) * ITEM_ALIGN;
}

/** File offset and size of the ICU data symbol (`icudt<N>_dat`) in a 64-bit little-endian ELF file. */
export function findIcuDataInElf(
  elf: Buffer,
): { symbol: string; fileOffset: number; bytes: number } | undefined {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw new Error("not an ELF file");
  if (elf[4] !== 2 || elf[5] !== 1) throw new Error("not a 64-bit little-endian ELF file");
  const shoff = Number(elf.readBigUInt64LE(0x28));
  const shentsize = elf.readUInt16LE(0x3a);
  const shnum = elf.readUInt16LE(0x3c);
  const section = (i: number) => {
    const at = shoff + i * shentsize;
    return {
      type: elf.readUInt32LE(at + 4),
      addr: Number(elf.readBigUInt64LE(at + 0x10)),
      offset: Number(elf.readBigUInt64LE(at + 0x18)),
      size: Number(elf.readBigUInt64LE(at + 0x20)),
      link: elf.readUInt32LE(at + 0x28),
      entsize: Number(elf.readBigUInt64LE(at + 0x38)),
    };
  };
  const SHT_SYMTAB = 2;
  const SHT_NOBITS = 8;
  for (let s = 0; s < shnum; s++) {
    const symtab = section(s);
    if (symtab.type !== SHT_SYMTAB || symtab.entsize < 24) continue;
    const strtab = section(symtab.link);
    for (let at = symtab.offset; at + 24 <= symtab.offset + symtab.size; at += symtab.entsize) {
      const nameAt = strtab.offset + elf.readUInt32LE(at);
      // Cheap pre-check on the first bytes before decoding the whole name.
      if (elf[nameAt] !== 0x69 || elf.toString("latin1", nameAt, nameAt + 5) !== "icudt") continue;
      const symbol = elf.toString("latin1", nameAt, elf.indexOf(0, nameAt));
      if (!/^icudt\d+_dat$/.test(symbol)) continue;
      const shndx = elf.readUInt16LE(at + 6);
      const value = Number(elf.readBigUInt64LE(at + 8));
      const bytes = Number(elf.readBigUInt64LE(at + 16));
      const home = section(shndx);
      if (home.type === SHT_NOBITS || value < home.addr || value + bytes > home.addr + home.size) {
        throw new Error(`${symbol} does not lie in the file's section ${shndx}`);
      }
      return { symbol, fileOffset: home.offset + (value - home.addr), bytes };
    }
  }
  return undefined;
}

/**
 * Trim the ICU data of an ELF Node binary held in memory, in place (the caller writes it to a copy:
 * never the cached original). Throws when the binary has no ICU data symbol or the package is not
 * what ICU's format says; the buffer is then unchanged.
 */
export function trimIcuData(elf: Buffer): IcuTrim {
  const found = findIcuDataInElf(elf);
  if (!found) throw new Error("no icudt*_dat symbol (a binary without symbols, or without ICU)");
  const region = elf.subarray(found.fileOffset, found.fileOffset + found.bytes);
  const trimmed = trimCommonData(region);
  trimmed.data.copy(region);
  return {
    symbol: found.symbol,
    fileOffset: found.fileOffset,
    bytes: found.bytes,
    keptBytes: trimmed.keptBytes,
    items: trimmed.items,
    keptItems: trimmed.keptItems,
  };
}
