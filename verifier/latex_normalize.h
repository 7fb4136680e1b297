// LaTeX answer normalisation, after the MATH grader's strip_string (hendrycks
// is_equiv) and Math-Verify: turns the many spellings of one answer into one string.
// Linear passes without recursion, so nesting depth and length cannot blow the stack
// or the time budget.
#ifndef PMDRL_VERIFIER_LATEX_NORMALIZE_H_
#define PMDRL_VERIFIER_LATEX_NORMALIZE_H_

#include <string>
#include <string_view>

#include "verifier/deadline.h"

namespace pmdrl {

struct NormalizedAnswer {
  std::string text;
  // A percent sign (or the word "percent") was stripped: "50\%" -> "50". The grader
  // compares "50" equal to "50" and, when only one side carried the sign, also to 0.5.
  bool percent = false;
};

// Normalises one extracted answer. What it does, in order:
//  * drops math delimiters ($, \( \) \[ \]), thin spaces (\! \, \; \: "\ ", ~),
//    \left / \right, \displaystyle, line breaks; \dfrac \tfrac \cfrac -> \frac;
//    "\$" (currency) is dropped, "\%" -> "%";
//  * the words "and" between list items become commas ("1 and 2" -> "1,2");
//  * trailing decorations, repeatedly: period, degrees (^\circ, ^{\circ}, \circ, °),
//    percent, units in \text{} / \mbox{} / \mathrm{} (with an optional ^2 / ^3), and
//    plain unit words from a fixed list ("5 dollars", "30 degrees", "12 cm");
//  * text wrappers (\text, \textbf, \mathrm, \mbox, \operatorname ...) are unwrapped;
//    one-token arguments get braces: "\frac12" -> "\frac{1}{2}", "\sqrt2" -> "\sqrt{2}";
//    all whitespace goes;
//  * "{,}" -> ","; thousands separators "1,234,567.5" -> "1234567.5" (only when the
//    whole answer is such a number, so the pair "1,2" stays);
//  * a single-variable left-hand side goes: "x=3" -> "3", "y=2x+1" -> "2x+1",
//    "\theta=\pi" -> "\pi", "f(x)=2x+1" -> "2x+1" (Math-Verify compares right-hand sides).
NormalizedAnswer NormalizeLatex(std::string_view raw, DeadlinePoll& poll);

}  // namespace pmdrl

#endif  // PMDRL_VERIFIER_LATEX_NORMALIZE_H_
