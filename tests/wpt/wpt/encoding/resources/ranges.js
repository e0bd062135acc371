var rangesHan = [
  [0x4e00, 0x9fba, "cjk"],
  [0xf900, 0xfa6e, "compatibility"],
  [0xfa70, 0xfada, "compatibility"],
  [0x3400, 0x4dbf, "extension A"],
];
var rangesHangul = [
  [0xac00, 0xd7af, "hangul"],
];
var rangesMisc = [
  [0x80, 0x4ff, "latin, greek, cyrillic, etc"],
  [0x2000, 0x23ff, "punctuation, currency, symbols"],
  [0x2460, 0x26ff, "enclosed chars and boxes"],
  [0x3000, 0x33ff, "various asian"],
  [0xff00, 0xffef, "half/full width"],
];
var rangesAll = [
  [0x80, 0xffff],
];
var rangesExtBa = [
  [0x20000, 0x2536b, "extB (pt 1)"],
];
var rangesExtBb = [
  [0x2536b, 0x2a6e0, "extB (pt 2)"],
];
var rangesPua = [
  [0xe000, 0xf8ff, "pua"],
];
