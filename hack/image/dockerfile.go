package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// stageSpec is what the final stage of the Dockerfile says the image is.
type stageSpec struct {
	Labels     map[string]string
	Env        []string // KEY=VALUE, in the order they were set
	User       string
	Entrypoint []string
	// Copy is the one COPY of the stage, "--from=<stage> <src> /": the
	// rootfs that build-static staged at <src> in that stage.
	Copy string
}

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int    // where it starts, 1-based
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// instructions splits a Dockerfile into instructions: comment lines
// (including parser directives) are dropped, lines ending in a backslash
// continue on the next one.
func instructions(src string) ([]instruction, error) {
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || trimmed == "" {
			continue // also inside a continuation, as docker does
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		body, cont := strings.CutSuffix(trimmed, "\\")
		cur.WriteString(body)
		cur.WriteString(" ")
		if cont {
			continue
		}
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{start, strings.ToUpper(cmd), strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() > 0 {
		return nil, fmt.Errorf("line %d: the last instruction ends in a line continuation", start)
	}
	return out, nil
}

// finalStage interprets the last stage of the Dockerfile src with the given
// build args. It accepts only what an image built without an engine can
// honour; anything else is an error that names the instruction.
func finalStage(src string, buildArgs map[string]string) (stageSpec, error) {
	all, err := instructions(src)
	if err != nil {
		return stageSpec{}, err
	}
	from := -1
	for i, in := range all {
		if in.cmd == "FROM" {
			from = i
		}
	}
	if from < 0 {
		return stageSpec{}, errors.New("no FROM")
	}
	if f := strings.Fields(all[from].args); len(f) != 1 || f[0] != "scratch" {
		return stageSpec{}, fmt.Errorf("line %d: the final stage is FROM %s: without an engine there is no base image to pull, so it must be FROM scratch (the rootfs is the whole image)", all[from].line, all[from].args)
	}

	spec := stageSpec{Labels: map[string]string{}}
	vars := map[string]string{} // ARGs and ENVs in scope, for $VAR
	declared := map[string]bool{}
	for _, in := range all[from+1:] {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d: %s: %s", in.line, in.cmd, fmt.Sprintf(format, a...))
		}
		switch in.cmd {
		case "ARG":
			w, err := words(in.args, nil)
			if err != nil {
				return stageSpec{}, fail("%v", err)
			}
			for _, a := range w {
				k, def, _ := strings.Cut(a, "=")
				if v, ok := buildArgs[k]; ok {
					def = v
				}
				declared[k] = true
				vars[k] = def
			}
		case "LABEL", "ENV":
			pairs, err := keyValues(in.args, vars)
			if err != nil {
				return stageSpec{}, fail("%v", err)
			}
			for _, kv := range pairs {
				k, v, _ := strings.Cut(kv, "=")
				if in.cmd == "LABEL" {
					spec.Labels[k] = v
					continue
				}
				vars[k] = v
				spec.Env = slices.DeleteFunc(spec.Env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
				spec.Env = append(spec.Env, kv)
			}
		case "USER":
			w, err := words(in.args, vars)
			if err != nil || len(w) != 1 {
				return stageSpec{}, fail("want one user[:group], got %q", in.args)
			}
			spec.User = w[0]
		case "ENTRYPOINT":
			var argv []string
			if err := json.Unmarshal([]byte(in.args), &argv); err != nil || len(argv) == 0 {
				return stageSpec{}, fail("want the exec form, a JSON array of strings: %q", in.args)
			}
			spec.Entrypoint = argv
		case "COPY":
			if spec.Copy != "" {
				return stageSpec{}, fail("a second COPY: the image has one layer, the rootfs")
			}
			f := strings.Fields(in.args)
			if len(f) != 3 || !strings.HasPrefix(f[0], "--from=") || f[0] == "--from=" || f[2] != "/" {
				return stageSpec{}, fail("want COPY --from=<stage> <rootfs> /, got %q", in.args)
			}
			spec.Copy = in.args
		default:
			return stageSpec{}, fail("not supported without an engine (the final stage may use ARG, LABEL, ENV, USER, ENTRYPOINT and one COPY); extend hack/image or drop it")
		}
	}
	var errs []error
	if spec.Copy == "" {
		errs = append(errs, errors.New("the final stage has no COPY --from=<stage> <rootfs> /"))
	}
	if len(spec.Entrypoint) == 0 {
		errs = append(errs, errors.New("the final stage has no ENTRYPOINT"))
	}
	for k := range buildArgs {
		if !declared[k] {
			errs = append(errs, fmt.Errorf("build arg %s is not declared by an ARG of the final stage", k))
		}
	}
	return spec, errors.Join(errs...)
}

// keyValues splits LABEL or ENV arguments into KEY=VALUE words, expanding
// $VAR and ${VAR} from vars. The legacy "ENV KEY VALUE" form is refused.
func keyValues(args string, vars map[string]string) ([]string, error) {
	w, err := words(args, vars)
	if err != nil {
		return nil, err
	}
	if len(w) == 0 {
		return nil, errors.New("no KEY=VALUE")
	}
	for _, kv := range w {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("%q: want KEY=VALUE", kv)
		}
	}
	return w, nil
}

// words splits s the way the Dockerfile does for LABEL, ENV, ARG and USER:
// at unquoted white space, with "double quotes" (where \" \\ and \$ are
// escapes), 'single quotes' (literal) and backslash escapes outside quotes.
// $VAR and ${VAR} are expanded from vars outside single quotes, unset ones
// to ""; with vars == nil nothing is expanded. ${VAR:-default} and other
// modifiers are refused rather than misread.
func words(s string, vars map[string]string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	var quote rune // 0, '"' or '\''
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		c := rs[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case c == '\\' && i+1 < len(rs) && (quote == 0 || strings.ContainsRune(`"\$`, rs[i+1])):
			i++
			cur.WriteRune(rs[i])
		case c == '"':
			inWord = true
			if quote == '"' {
				quote = 0
			} else {
				quote = '"'
			}
		case c == '\'' && quote == 0:
			inWord, quote = true, '\''
		case c == '$' && vars != nil:
			name, n, err := varName(rs[i+1:])
			if err != nil {
				return nil, err
			}
			if n == 0 {
				cur.WriteRune(c)
				break
			}
			inWord = true
			cur.WriteString(vars[name])
			i += n
		case quote == 0 && (c == ' ' || c == '\t'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			inWord = true
			cur.WriteRune(c)
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// varName reads the variable name after a '$': NAME or {NAME}. It returns
// the name and how many runes it took, 0 when no name follows.
func varName(rs []rune) (string, int, error) {
	isName := func(r rune, first bool) bool {
		return r == '_' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || !first && '0' <= r && r <= '9'
	}
	if len(rs) > 0 && rs[0] == '{' {
		end := slices.Index(rs, '}')
		if end < 0 {
			return "", 0, fmt.Errorf("unterminated ${ in %q", string(rs))
		}
		name := string(rs[1:end])
		for j, r := range name {
			if !isName(r, j == 0) {
				return "", 0, fmt.Errorf("${%s}: only plain ${NAME} is supported", name)
			}
		}
		if name == "" {
			return "", 0, errors.New("empty ${}")
		}
		return name, end + 1, nil
	}
	n := 0
	for n < len(rs) && isName(rs[n], n == 0) {
		n++
	}
	return string(rs[:n]), n, nil
}
