#include "verifier/symbolic_equal.h"

#include <ginac/ginac.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "verifier/latex_scan.h"

namespace pmdrl {
namespace {

using latex::IsAlpha;
using latex::IsDigit;

constexpr double kInf = std::numeric_limits<double>::infinity();

// A translated sub-expression and what the pre-screen knows about it.
struct Node {
  std::string text;
  bool numeric = true;  // no symbols: GiNaC evaluates it eagerly
  // Numeric nodes: an upper bound on the decimal digits of the exact value (numerator
  // and denominator together). Symbolic nodes: unused.
  double digits = 1;
  // The largest `digits` of any numeric sub-expression inside (this one included).
  double max_numeric_digits = 0;
  // Set for an integer literal (possibly negated): its value.
  std::optional<double> integer;
};

Node Numeric(std::string text, double digits) {
  Node n;
  n.text = std::move(text);
  n.digits = digits;
  n.max_numeric_digits = digits;
  return n;
}

Node Symbolic(std::string text) {
  Node n;
  n.text = std::move(text);
  n.numeric = false;
  n.digits = 0;
  return n;
}

// Combines the pre-screen facts of operands into a node with text `text`.
Node Combine(std::string text, std::initializer_list<const Node*> parts, bool sum_digits) {
  Node n;
  n.text = std::move(text);
  n.numeric = true;
  n.digits = 0;
  for (const Node* p : parts) {
    n.numeric = n.numeric && p->numeric;
    n.digits = sum_digits ? n.digits + p->digits : std::max(n.digits, p->digits + 1);
    n.max_numeric_digits = std::max(n.max_numeric_digits, p->max_numeric_digits);
  }
  if (n.numeric) n.max_numeric_digits = std::max(n.max_numeric_digits, n.digits);
  return n;
}

bool IsGreek(std::string_view name) {
  static constexpr std::string_view kGreek[] = {
      "alpha",    "beta",    "gamma", "delta",  "epsilon", "varepsilon", "zeta",  "eta",   "theta",
      "vartheta", "iota",    "kappa", "lambda", "mu",      "nu",         "xi",    "rho",   "sigma",
      "tau",      "upsilon", "phi",   "varphi", "chi",     "psi",        "omega", "Gamma", "Delta",
      "Theta",    "Lambda",  "Xi",    "Sigma",  "Phi",     "Psi",        "Omega"};
  return std::find(std::begin(kGreek), std::end(kGreek), name) != std::end(kGreek);
}

// One-argument functions: LaTeX name -> GiNaC text with "#" for the argument.
std::optional<std::string_view> FunctionTemplate(std::string_view name) {
  static constexpr std::pair<std::string_view, std::string_view> kFunctions[] = {
      {"sin", "sin(#)"},     {"cos", "cos(#)"},     {"tan", "tan(#)"},
      {"sec", "(1/cos(#))"}, {"csc", "(1/sin(#))"}, {"cot", "(cos(#)/sin(#))"},
      {"arcsin", "asin(#)"}, {"arccos", "acos(#)"}, {"arctan", "atan(#)"},
      {"sinh", "sinh(#)"},   {"cosh", "cosh(#)"},   {"tanh", "tanh(#)"},
      {"ln", "log(#)"},      {"log", "log(#)"},     {"exp", "exp(#)"}};
  for (const auto& [latex, ginac] : kFunctions) {
    if (name == latex) return ginac;
  }
  return std::nullopt;
}

std::string Fill(std::string_view pattern, const std::string& arg) {
  std::string out;
  for (char c : pattern) {
    if (c == '#') {
      out += arg;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Recursive descent over the normalised LaTeX. Recursion depth is bounded by
// kMaxSymbolicDepth (checked on every group), the input by kMaxSymbolicBytes.
class Translator {
 public:
  explicit Translator(std::string_view s) : s_(s) {}

  absl::StatusOr<std::string> Run() {
    if (s_.empty()) return Fail("empty");
    if (s_.size() > kMaxSymbolicBytes) return Fail("too long for symbolic comparison");
    // A run of three or more letters outside a command is a word ("yes", "none"), not a
    // product of variables: comparing it symbolically would make "yes" equal "sey".
    for (size_t i = 0; i < s_.size();) {
      if (s_[i] == '\\') {  // a command's name is no word
        for (++i; i < s_.size() && IsAlpha(s_[i]);) ++i;
        continue;
      }
      size_t j = i;
      while (j < s_.size() && IsAlpha(s_[j])) ++j;
      if (j - i >= 3) return Fail("a word, not an expression");
      i = j == i ? i + 1 : j;
    }
    std::optional<Node> n = ParseExpr();
    if (!n) return Fail(error_);
    if (pos_ != s_.size()) {
      return Fail(absl::StrCat("unexpected '", std::string(s_.substr(pos_, 8)), "'"));
    }
    return std::move(n->text);
  }

 private:
  absl::Status Fail(std::string_view why) const {
    return absl::InvalidArgumentError(absl::StrCat("symbolic: ", std::string(why), " at offset ",
                                                   pos_, " of \"", std::string(s_.substr(0, 64)),
                                                   "\""));
  }
  std::nullopt_t Error(std::string why) {
    if (error_.empty()) error_ = std::move(why);
    return std::nullopt;
  }

  bool AtEnd() const { return pos_ >= s_.size(); }
  // The next character, spaces skipped (the normaliser keeps one only to end a command
  // name: "\pi r").
  char Peek() {
    while (pos_ < s_.size() && s_[pos_] == ' ') ++pos_;
    return AtEnd() ? '\0' : s_[pos_];
  }
  // The command name at pos_ ("\frac" -> "frac"), or "" when pos_ is no command.
  std::string_view PeekCommand() {
    if (Peek() != '\\') return {};
    size_t end = pos_ + 1;
    while (end < s_.size() && IsAlpha(s_[end])) ++end;
    return s_.substr(pos_ + 1, end - pos_ - 1);
  }
  bool Consume(char c) {
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }
  bool ConsumeCommand(std::string_view name) {
    if (PeekCommand() != name || name.empty()) return false;
    pos_ += 1 + name.size();
    return true;
  }

  // Does the next token start an operand (for implicit multiplication)?
  bool StartsOperand() {
    char c = Peek();
    if (IsDigit(c) || c == '.' || IsAlpha(c) || c == '(' || c == '{') return true;
    if (c != '\\') return false;
    std::string_view cmd = PeekCommand();
    return !cmd.empty() && cmd != "cdot" && cmd != "times" && cmd != "div" && cmd != "pm" &&
           cmd != "mp";
  }

  std::optional<Node> ParseExpr() {
    if (++depth_ > kMaxSymbolicDepth) return Error("nested too deeply");
    std::optional<Node> acc = ParseTerm();
    while (acc && (Peek() == '+' || Peek() == '-')) {
      char op = s_[pos_++];
      std::optional<Node> rhs = ParseTerm();
      if (!rhs) return std::nullopt;
      acc = Combine(absl::StrCat(acc->text, std::string(1, op), rhs->text), {&*acc, &*rhs},
                    /*sum_digits=*/false);
    }
    --depth_;
    return acc;
  }

  std::optional<Node> ParseTerm() {
    std::optional<Node> acc = ParseUnary();
    while (acc) {
      char op;
      if (Consume('*') || ConsumeCommand("cdot") || ConsumeCommand("times")) {
        op = '*';
      } else if (Consume('/') || ConsumeCommand("div")) {
        op = '/';
      } else if (StartsOperand()) {
        op = '*';  // implicit multiplication
      } else {
        break;
      }
      std::optional<Node> rhs = ParseUnary();
      if (!rhs) return std::nullopt;
      acc = Combine(absl::StrCat("(", acc->text, ")", std::string(1, op), "(", rhs->text, ")"),
                    {&*acc, &*rhs}, /*sum_digits=*/true);
    }
    return acc;
  }

  std::optional<Node> ParseUnary() {
    if (Peek() == '-' || Peek() == '+') {
      bool minus = s_[pos_++] == '-';
      if (++depth_ > kMaxSymbolicDepth) return Error("nested too deeply");
      std::optional<Node> n = ParseUnary();
      --depth_;
      if (!n) return std::nullopt;
      if (minus) {
        n->text = absl::StrCat("(-(", n->text, "))");
        if (n->integer) n->integer = -*n->integer;
      }
      return n;
    }
    return ParsePower();
  }

  // A power's exponent or a function's power: "{...}", or one token ("x^2" is x^{2},
  // "x^23" is x^{2}*3 as in LaTeX); a sign is allowed in front ("x^-1").
  std::optional<Node> ParseScript() {
    if (Peek() == '{') return ParseGroup('{', '}');
    if (Peek() == '-' || Peek() == '+') {
      bool minus = s_[pos_++] == '-';
      std::optional<Node> n = ParseScript();
      if (n && minus) {
        n->text = absl::StrCat("(-(", n->text, "))");
        if (n->integer) n->integer = -*n->integer;
      }
      return n;
    }
    if (IsDigit(Peek())) {
      Node n = Numeric(std::string(1, s_[pos_]), 1);
      n.integer = s_[pos_] - '0';
      ++pos_;
      return n;
    }
    if (IsAlpha(Peek())) return ParseLetter(/*allow_subscript=*/false);
    if (Peek() == '\\') return ParsePrimary();
    return Error("bad exponent");
  }

  // Checks that base^exponent stays small enough for GiNaC to evaluate eagerly.
  std::optional<Node> MakePower(const Node& base, const Node& exponent) {
    Node n = Combine(absl::StrCat("(", base.text, ")^(", exponent.text, ")"), {&base, &exponent},
                     /*sum_digits=*/true);
    // A bound on |n| for the integer part GiNaC may evaluate: the exponent itself when
    // it is numeric, else its largest numeric part (expand() splits a^(x+n) = a^x a^n).
    double exponent_bound;
    if (exponent.integer) {
      exponent_bound = std::fabs(*exponent.integer);
    } else if (exponent.numeric) {
      exponent_bound = std::pow(10.0, std::min(exponent.digits, 300.0));
    } else {
      exponent_bound = std::pow(10.0, std::min(exponent.max_numeric_digits, 300.0));
    }
    if (base.numeric) {
      double digits = std::max(exponent_bound, 1.0) * std::max(base.digits, 1.0);
      if (digits > kMaxSymbolicDigits) return Error("power too large");
      if (n.numeric) {
        n.digits = digits;
        n.max_numeric_digits = std::max(n.max_numeric_digits, digits);
      }
    } else if (exponent_bound > kMaxSymbolicDigits) {
      return Error("exponent too large");
    }
    return n;
  }

  std::optional<Node> ParsePower() {
    std::optional<Node> base = ParsePostfix();
    if (!base) return std::nullopt;
    if (!Consume('^')) return base;
    std::optional<Node> exponent = ParseScript();
    if (!exponent) return std::nullopt;
    return MakePower(*base, *exponent);
  }

  std::optional<Node> ParsePostfix() {
    std::optional<Node> n = ParsePrimary();
    while (n && Consume('!')) {
      if (n->numeric) {
        if (!n->integer || *n->integer < 0 || *n->integer > kMaxFactorialArgument) {
          return Error("factorial argument too large or not a natural number");
        }
      } else if (n->max_numeric_digits > 3) {
        return Error("factorial argument too large");
      }
      Node f = *n;
      f.text = absl::StrCat("factorial(", n->text, ")");
      f.integer.reset();
      if (f.numeric) {
        f.digits = 2600;  // 1000! has 2568 digits
        f.max_numeric_digits = std::max(f.max_numeric_digits, f.digits);
      }
      n = std::move(f);
    }
    return n;
  }

  // "(...)", "{...}" or "[...]" after the opening character is at pos_.
  std::optional<Node> ParseGroup(char open, char close) {
    if (!Consume(open)) return Error(absl::StrCat("expected '", std::string(1, open), "'"));
    std::optional<Node> inner = ParseExpr();
    if (!inner) return std::nullopt;
    if (!Consume(close)) return Error(absl::StrCat("expected '", std::string(1, close), "'"));
    std::optional<double> integer = inner->integer;
    Node n = std::move(*inner);
    n.text = absl::StrCat("(", n.text, ")");
    n.integer = integer;
    return n;
  }

  // A letter, optionally with a subscript: x, x_1, x_{12}, x_n.
  std::optional<Node> ParseLetter(bool allow_subscript) {
    std::string name = absl::StrCat("s_", std::string(1, s_[pos_++]));
    if (name == "s_e") return Numeric("exp(1)", 1);  // Euler's number
    if (allow_subscript && Consume('_')) {
      std::string_view sub;
      if (Peek() == '{') {
        size_t close = s_.find('}', pos_);
        if (close == std::string_view::npos) return Error("unclosed subscript");
        sub = s_.substr(pos_ + 1, close - pos_ - 1);
        pos_ = close + 1;
      } else if (IsDigit(Peek()) || IsAlpha(Peek())) {
        sub = s_.substr(pos_++, 1);
      }
      if (sub.empty() || sub.size() > 8) return Error("bad subscript");
      for (char c : sub) {
        if (!IsDigit(c) && !IsAlpha(c)) return Error("bad subscript");
      }
      absl::StrAppend(&name, "_", std::string(sub));
    }
    return Symbolic(std::move(name));
  }

  std::optional<Node> ParseNumber() {
    std::string digits;
    size_t fraction_digits = 0;
    bool point = false;
    while (IsDigit(Peek()) || (Peek() == '.' && !point)) {
      if (Peek() == '.') {
        point = true;
      } else {
        digits.push_back(Peek());
        if (point) ++fraction_digits;
      }
      ++pos_;
    }
    if (digits.empty()) return Error("lone '.'");
    // No leading zeros: "007" must not look like anything but 7 to GiNaC.
    size_t nonzero = digits.find_first_not_of('0');
    digits.erase(0, nonzero == std::string::npos ? digits.size() - 1 : nonzero);
    if (digits.size() > kMaxSymbolicDigits) return Error("number too long");
    if (!point || fraction_digits == 0) {
      Node n = Numeric(digits, static_cast<double>(digits.size()));
      if (digits.size() <= 15) n.integer = std::stod(digits);
      return n;
    }
    // Exact: 12.25 -> (1225/100).
    std::string denominator = absl::StrCat("1", std::string(fraction_digits, '0'));
    return Numeric(absl::StrCat("(", digits, "/", denominator, ")"),
                   static_cast<double>(digits.size() + denominator.size()));
  }

  // A function's argument: "(...)", "{...}" or one power-level operand ("\sin x^2").
  std::optional<Node> ParseFunctionArgument() {
    if (Peek() == '(') return ParseGroup('(', ')');
    if (Peek() == '{') return ParseGroup('{', '}');
    if (++depth_ > kMaxSymbolicDepth) return Error("nested too deeply");
    std::optional<Node> n = ParsePower();
    --depth_;
    return n;
  }

  std::optional<Node> ParseCommand() {
    std::string_view name = PeekCommand();
    if (name.empty()) return Error("unsupported escape");
    pos_ += 1 + name.size();
    if (++depth_ > kMaxSymbolicDepth) return Error("nested too deeply");
    std::optional<Node> result = ParseCommandBody(name);
    --depth_;
    return result;
  }

  std::optional<Node> ParseCommandBody(std::string_view name) {
    if (name == "frac") {
      std::optional<Node> num = ParseGroup('{', '}');
      if (!num) return std::nullopt;
      std::optional<Node> den = ParseGroup('{', '}');
      if (!den) return std::nullopt;
      return Combine(absl::StrCat("((", num->text, ")/(", den->text, "))"), {&*num, &*den},
                     /*sum_digits=*/true);
    }
    if (name == "sqrt") {
      std::optional<Node> index;
      if (Peek() == '[') {
        index = ParseGroup('[', ']');
        if (!index) return std::nullopt;
        if (!index->numeric || index->digits > 3) return Error("root index too large");
      }
      std::optional<Node> radicand = Peek() == '{' ? ParseGroup('{', '}') : ParseScript();
      if (!radicand) return std::nullopt;
      if (!index) {
        return Combine(absl::StrCat("sqrt(", radicand->text, ")"), {&*radicand},
                       /*sum_digits=*/true);
      }
      return Combine(absl::StrCat("(", radicand->text, ")^(1/(", index->text, "))"),
                     {&*radicand, &*index}, /*sum_digits=*/true);
    }
    if (name == "binom" || name == "dbinom" || name == "tbinom") {
      std::optional<Node> n = ParseGroup('{', '}');
      if (!n) return std::nullopt;
      std::optional<Node> k = ParseGroup('{', '}');
      if (!k) return std::nullopt;
      if (n->max_numeric_digits > 4 || k->max_numeric_digits > 4) {
        return Error("binomial arguments too large");
      }
      Node b = Combine(absl::StrCat("binomial(", n->text, ",", k->text, ")"), {&*n, &*k},
                       /*sum_digits=*/true);
      if (b.numeric) b.digits = b.max_numeric_digits = 1e4 * 0.31;  // C(9999, k) < 2^9999
      return b;
    }
    if (name == "pi") return Numeric("Pi", 1);
    if (IsGreek(name)) return Symbolic(absl::StrCat("s_", std::string(name)));
    if (std::optional<std::string_view> pattern = FunctionTemplate(name)) {
      std::optional<Node> power;  // "\sin^2 x"
      std::optional<Node> base;   // "\log_2 8"
      if (name == "log" && Consume('_')) {
        base = ParseScript();
        if (!base) return std::nullopt;
      }
      if (Consume('^')) {
        power = ParseScript();
        if (!power) return std::nullopt;
      }
      std::optional<Node> arg = ParseFunctionArgument();
      if (!arg) return std::nullopt;
      Node f = Combine(Fill(*pattern, arg->text), {&*arg}, /*sum_digits=*/true);
      if (base) {
        f = Combine(absl::StrCat("(", f.text, ")/log(", base->text, ")"), {&f, &*base},
                    /*sum_digits=*/true);
      }
      if (power) return MakePower(f, *power);
      return f;
    }
    return Error(absl::StrCat("unsupported command \\", std::string(name)));
  }

  std::optional<Node> ParsePrimary() {
    char c = Peek();
    if (IsDigit(c) || c == '.') return ParseNumber();
    if (IsAlpha(c)) return ParseLetter(/*allow_subscript=*/true);
    if (c == '(') return ParseGroup('(', ')');
    if (c == '{') return ParseGroup('{', '}');
    if (c == '|') {
      ++pos_;
      std::optional<Node> inner = ParseExpr();
      if (!inner) return std::nullopt;
      if (!Consume('|')) return Error("unclosed |");
      Node n = std::move(*inner);
      n.text = absl::StrCat("abs(", n.text, ")");
      n.integer.reset();
      return n;
    }
    if (c == '\\') return ParseCommand();
    if (AtEnd()) return Error("unexpected end");
    return Error(absl::StrCat("unexpected '", std::string(1, c), "'"));
  }

  std::string_view s_;
  size_t pos_ = 0;
  int depth_ = 0;
  std::string error_;
};

// ---------------------------------------------------------------------------
// GiNaC side. Not thread-safe (see the header): one caller per process at a time.

// Roughly how many terms expand() and normal() would produce for `e`: for each node the
// terms of its numerator and denominator once brought over a common denominator (a sum
// multiplies its summands' denominators, a power raises both to |n|). `worst` receives
// the largest count at any node (both work bottom-up). Saturates at `limit`.
struct Terms {
  double num = 1, den = 1;
};

Terms ExpansionSize(const GiNaC::ex& e, double limit, double* worst, int depth) {
  auto cap = [limit](double v) { return std::min(v, limit * 2); };
  Terms t;
  if (depth > 4 * kMaxSymbolicDepth) {
    t.num = kInf;
  } else if (GiNaC::is_a<GiNaC::add>(e)) {
    double num = 0, den = 1;
    for (size_t i = 0; i < e.nops(); ++i) {
      Terms c = ExpansionSize(e.op(i), limit, worst, depth + 1);
      num = cap(num + c.num);
      den = cap(den * c.den);
    }
    t.num = cap(num * den);
    t.den = den;
  } else if (GiNaC::is_a<GiNaC::mul>(e)) {
    for (size_t i = 0; i < e.nops(); ++i) {
      Terms c = ExpansionSize(e.op(i), limit, worst, depth + 1);
      t.num = cap(t.num * c.num);
      t.den = cap(t.den * c.den);
    }
  } else if (GiNaC::is_a<GiNaC::power>(e)) {
    Terms base = ExpansionSize(e.op(0), limit, worst, depth + 1);
    ExpansionSize(e.op(1), limit, worst, depth + 1);
    const GiNaC::ex exponent = e.op(1);
    // The integer part expand() may multiply out: the exponent itself, or the numeric
    // summands of a sum (a^(x+n) = a^x a^n).
    double n = 0;
    bool negative = false;
    if (GiNaC::is_a<GiNaC::numeric>(exponent)) {
      const GiNaC::numeric& num = GiNaC::ex_to<GiNaC::numeric>(exponent);
      if (num.is_integer()) {
        n = std::fabs(num.to_double());
        negative = num.is_negative();
      }
    } else if (GiNaC::is_a<GiNaC::add>(exponent)) {
      for (size_t i = 0; i < exponent.nops(); ++i) {
        if (GiNaC::is_a<GiNaC::numeric>(exponent.op(i))) {
          n += std::fabs(GiNaC::ex_to<GiNaC::numeric>(exponent.op(i)).to_double());
        }
      }
    }
    n = std::min(n, 1e3);
    if (n > 0) {
      t.num = cap(std::pow(base.num, n));
      t.den = cap(std::pow(base.den, n));
      if (negative) std::swap(t.num, t.den);
    } else {
      t.num = cap(base.num * base.den);  // sqrt(x+1): normal() works on the inside
    }
  } else {
    for (size_t i = 0; i < e.nops(); ++i) ExpansionSize(e.op(i), limit, worst, depth + 1);
  }
  *worst = std::max(*worst, std::max(t.num, t.den));
  return t;
}

// |x| of an evaluated numeric expression, or nullopt when it did not evaluate to one.
std::optional<double> Magnitude(const GiNaC::ex& e) {
  if (!GiNaC::is_a<GiNaC::numeric>(e)) return std::nullopt;
  const GiNaC::numeric& n = GiNaC::ex_to<GiNaC::numeric>(e);
  double v = GiNaC::abs(n).to_double();
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

// Numeric comparison of a and b at `subs` (empty for constants). nullopt: undecided
// (a pole, or something that does not evaluate to a number).
std::optional<bool> NumericallyEqual(const GiNaC::ex& a, const GiNaC::ex& b,
                                     const GiNaC::exmap& subs) {
  GiNaC::ex av = a.subs(subs).evalf();
  GiNaC::ex bv = b.subs(subs).evalf();
  std::optional<double> ma = Magnitude(av), mb = Magnitude(bv);
  std::optional<double> diff = Magnitude((av - bv).evalf());
  if (!ma || !mb || !diff) return std::nullopt;
  return *diff <= 1e-6 * std::max({1.0, *ma, *mb});
}

SymbolicVerdict Compare(const std::string& a_text, const std::string& b_text, DeadlinePoll& poll) {
  GiNaC::symtab table;
  table["Pi"] = GiNaC::Pi;
  GiNaC::parser reader(table);
  GiNaC::ex a = reader(a_text);
  GiNaC::ex b = reader(b_text);
  if (poll.CheckNow()) return SymbolicVerdict::kTimeout;

  GiNaC::ex difference = a - b;
  double worst = 0;
  ExpansionSize(difference, 5000, &worst, 0);
  if (worst <= 5000) {
    GiNaC::ex diff = difference.expand();
    if (poll.CheckNow()) return SymbolicVerdict::kTimeout;
    diff = diff.normal();
    if (poll.CheckNow()) return SymbolicVerdict::kTimeout;
    if (diff.is_zero()) return SymbolicVerdict::kEqual;
    // An exact nonzero rational difference decides.
    if (GiNaC::is_a<GiNaC::numeric>(diff) && GiNaC::ex_to<GiNaC::numeric>(diff).is_rational()) {
      return SymbolicVerdict::kNotEqual;
    }
  }

  std::vector<GiNaC::ex> symbols;
  for (const auto& [name, value] : reader.get_syms()) {
    if (GiNaC::is_a<GiNaC::symbol>(value)) symbols.push_back(value);
  }
  if (symbols.empty()) {
    std::optional<bool> equal = NumericallyEqual(a, b, {});
    return equal.value_or(false) ? SymbolicVerdict::kEqual : SymbolicVerdict::kNotEqual;
  }
  // Fixed, irrational-looking points (no two symbols share a value), so the verdict is
  // deterministic. Every point that evaluates must agree, and at least two must.
  int decided = 0;
  for (int point = 0; point < 5; ++point) {
    if (poll.CheckNow()) return SymbolicVerdict::kTimeout;
    GiNaC::exmap subs;
    for (size_t k = 0; k < symbols.size(); ++k) {
      double v = 0.3183 + 0.5772 * point + 0.7071 * static_cast<double>(k) +
                 0.1414 * static_cast<double>((point * 7 + k * 3) % 5);
      subs[symbols[k]] = GiNaC::numeric(v);
    }
    std::optional<bool> equal;
    try {
      equal = NumericallyEqual(a, b, subs);
    } catch (const std::exception&) {
      equal.reset();  // a pole at this point: try the next one
    }
    if (!equal) continue;
    if (!*equal) return SymbolicVerdict::kNotEqual;
    ++decided;
  }
  return decided >= 2 ? SymbolicVerdict::kEqual : SymbolicVerdict::kNotEqual;
}

}  // namespace

absl::StatusOr<std::string> LatexToGinac(std::string_view normalized) {
  return Translator(normalized).Run();
}

SymbolicVerdict SymbolicEqual(std::string_view a, std::string_view b, const Deadline& deadline) {
  DeadlinePoll poll(deadline);
  absl::StatusOr<std::string> a_text = LatexToGinac(a);
  if (!a_text.ok()) return SymbolicVerdict::kUnsupported;
  absl::StatusOr<std::string> b_text = LatexToGinac(b);
  if (!b_text.ok()) return SymbolicVerdict::kUnsupported;
  if (poll.CheckNow()) return SymbolicVerdict::kTimeout;
  try {
    return Compare(*a_text, *b_text, poll);
  } catch (const std::exception&) {
    // GiNaC reports parse errors, division by zero and domain errors by throwing.
    return SymbolicVerdict::kUnsupported;
  } catch (...) {
    return SymbolicVerdict::kUnsupported;
  }
}

}  // namespace pmdrl
