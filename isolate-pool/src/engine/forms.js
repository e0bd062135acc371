// Form data parsing for Request/Response `formData()` (see the Body mixin in bootstrap.js).
// LLRT's `formData()` parses multipart bodies line by line (values keep the CRLF before the next
// delimiter, empty values are lost) and answers urlencoded bodies with an empty FormData. These
// parse the body bytes by the HTML standard's rules instead: urlencoded through URLSearchParams,
// multipart by delimiters on the bytes, each part a string (UTF-8) or, with a filename, a File.
// A body that is neither, or a malformed one, is a TypeError (the body is consumed either way).
// Compiled to bytecode by build.rs and loaded on the first `formData()` call (`part("forms")`).
// `make` receives the intrinsics and native classes the bootstrap captured before any user code
// ran (this module is evaluated later, when globals and prototypes may have been replaced).

export default function make(h) {
  const {
    GuardedFile,
    ReflectApply,
    ObjectFreeze,
    JSONStringify,
    TypeErrorCtor,
    Uint8ArrayCtor,
    Uint8ArrayIndexOf,
    Uint8ArraySubarray,
    StringIndexOf,
    StringSlice,
    StringToLowerCase,
    StringTrim,
    charCodeAt,
    isHttpWhitespace,
    nativeClasses,
  } = h;
  const CR = 13;
  const LF = 10;
  const DASH = 45;
  function indexOfBytes(bytes, needle, from) {
    const first = needle[0];
    const last = bytes.length - needle.length;
    for (let i = ReflectApply(Uint8ArrayIndexOf, bytes, [first, from]); i !== -1 && i <= last;
      i = ReflectApply(Uint8ArrayIndexOf, bytes, [first, i + 1])) {
      let j = 1;
      while (j < needle.length && bytes[i + j] === needle[j]) j++;
      if (j === needle.length) return i;
    }
    return -1;
  }
  function asciiBytes(s) {
    const out = new Uint8ArrayCtor(s.length);
    for (let i = 0; i < s.length; i++) out[i] = charCodeAt(s, i) & 0xff;
    return out;
  }
  function mimeEssence(contentType) {
    const semi = ReflectApply(StringIndexOf, contentType, [";"]);
    const essence = semi === -1 ? contentType : ReflectApply(StringSlice, contentType, [0, semi]);
    return ReflectApply(StringToLowerCase, ReflectApply(StringTrim, essence, []), []);
  }
  /** The value of parameter `name` in a header value's `; name=value` list, or undefined. */
  function headerParam(value, name) {
    let i = ReflectApply(StringIndexOf, value, [";"]);
    while (i !== -1 && i < value.length) {
      i++;
      while (i < value.length && isHttpWhitespace(charCodeAt(value, i))) i++;
      const eq = ReflectApply(StringIndexOf, value, ["=", i]);
      if (eq === -1) return undefined;
      const key = ReflectApply(StringToLowerCase, ReflectApply(StringTrim, ReflectApply(StringSlice, value, [i, eq]), []), []);
      let j = eq + 1;
      let v = "";
      if (charCodeAt(value, j) === 34) {
        j++;
        while (j < value.length && charCodeAt(value, j) !== 34) {
          if (charCodeAt(value, j) === 92 && j + 1 < value.length) j++;
          v += value[j];
          j++;
        }
        j++;
      } else {
        let end = ReflectApply(StringIndexOf, value, [";", j]);
        if (end === -1) end = value.length;
        v = ReflectApply(StringTrim, ReflectApply(StringSlice, value, [j, end]), []);
        j = end;
      }
      if (key === name) return v;
      i = ReflectApply(StringIndexOf, value, [";", j]);
    }
    return undefined;
  }
  function formDataFrom(what, contentType, bytes, decode) {
    const essence = mimeEssence(contentType);
    const { FormData: FormDataCtor, FormDataAppend: append } = nativeClasses("formdata");
    const form = new FormDataCtor();
    if (essence === "application/x-www-form-urlencoded") {
      const { URLSearchParams: URLSearchParamsCtor, URLSearchParamsForEach } = nativeClasses("url");
      const params = new URLSearchParamsCtor(decode(bytes));
      ReflectApply(URLSearchParamsForEach, params, [
        (value, name) => ReflectApply(append, form, [name, value]),
      ]);
      return form;
    }
    if (essence !== "multipart/form-data") {
      throw new TypeErrorCtor(`${what}: a body of type ${JSONStringify(contentType)} is not form data`);
    }
    const boundary = headerParam(contentType, "boundary");
    if (boundary === undefined || boundary.length === 0 || boundary.length > 70) {
      throw new TypeErrorCtor(`${what}: multipart/form-data without a valid boundary`);
    }
    const malformed = () => new TypeErrorCtor(`${what}: the multipart/form-data body is malformed`);
    const delimiter = asciiBytes("--" + boundary);
    const next = asciiBytes("\r\n--" + boundary);
    // The first delimiter opens the body or follows a preamble line.
    let at = 0;
    while (true) {
      at = indexOfBytes(bytes, delimiter, at);
      if (at === -1) throw malformed();
      if (at === 0 || (bytes[at - 2] === CR && bytes[at - 1] === LF)) break;
      at++;
    }
    at += delimiter.length;
    while (true) {
      if (bytes[at] === DASH && bytes[at + 1] === DASH) return form;
      while (bytes[at] === 32 || bytes[at] === 9) at++;
      if (bytes[at] !== CR || bytes[at + 1] !== LF) throw malformed();
      at += 2;
      let name;
      let filename;
      let type;
      while (!(bytes[at] === CR && bytes[at + 1] === LF)) {
        const eol = indexOfBytes(bytes, CRLF_BYTES, at);
        if (eol === -1) throw malformed();
        const line = decode(ReflectApply(Uint8ArraySubarray, bytes, [at, eol]));
        at = eol + 2;
        const colon = ReflectApply(StringIndexOf, line, [":"]);
        if (colon <= 0) throw malformed();
        const header = ReflectApply(StringToLowerCase, ReflectApply(StringTrim, ReflectApply(StringSlice, line, [0, colon]), []), []);
        const value = ReflectApply(StringTrim, ReflectApply(StringSlice, line, [colon + 1]), []);
        if (header === "content-disposition") {
          if (mimeEssence(value) !== "form-data") throw malformed();
          name = headerParam(value, "name");
          filename = headerParam(value, "filename");
        } else if (header === "content-type") {
          type = value;
        }
      }
      at += 2;
      if (name === undefined) throw malformed();
      const end = indexOfBytes(bytes, next, at);
      if (end === -1) throw malformed();
      const content = ReflectApply(Uint8ArraySubarray, bytes, [at, end]);
      if (filename === undefined) {
        ReflectApply(append, form, [name, decode(content)]);
      } else {
        const file = new GuardedFile([content], filename, { __proto__: null, type: type === undefined ? "text/plain" : type });
        ReflectApply(append, form, [name, file]);
      }
      at = end + next.length;
    }
  }
  const CRLF_BYTES = new Uint8ArrayCtor(2);
  CRLF_BYTES[0] = CR;
  CRLF_BYTES[1] = LF;

  return ObjectFreeze({ __proto__: null, formDataFrom });
}
