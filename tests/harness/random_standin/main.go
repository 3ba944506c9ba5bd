// pulumi-resource-random, TEST-ONLY STAND-IN. Not the real pulumi-random provider plugin.
//
// What it is: a tiny resource provider plugin that implements one resource of pulumi-random,
// random:index/randomPassword:RandomPassword, with the real plugin's (4.21.4) inputs, defaults,
// validation, replace-on-any-change diff, secret `result`/`bcryptHash` outputs and "none" ID.
// Any other random resource fails with a clear gRPC error.
//
// Why it exists: the tests run our program (components/keys.py uses pulumi_random.RandomPassword)
// through the real Pulumi CLI, offline. The real plugin cannot be downloaded there, and it cannot be
// built either: the Go module proxy refuses pulumi-random's modules. scripts/random-standin builds this
// stand-in; the tests put its directory on PATH. Users get the real plugin from Pulumi's plugin
// downloads (`pulumi plugin install resource random 4.21.4`); never ship this one.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"sort"
	"strings"

	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pbempty "google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource/plugin"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi/provider"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
)

const (
	// The pulumi-random Python SDK's version (uv.lock): the engine then prints no version mismatch.
	version      = "4.21.4"
	passwordType = "random:index/randomPassword:RandomPassword"
	// The real plugin's ID for every password (the password itself is not an ID).
	passwordID = "none"

	lowerChars     = "abcdefghijklmnopqrstuvwxyz"
	upperChars     = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	numericChars   = "0123456789"
	defaultSpecial = "!@#$%&*()-_=+[]{}<>:?"
	bcryptMaxBytes = 72 // bcrypt hashes at most 72 bytes; the real plugin hashes the first 72
)

// Output-only properties: never inputs, never compared by Diff.
var outputKeys = map[resource.PropertyKey]bool{"result": true, "bcryptHash": true, "id": true}

var minKeys = []resource.PropertyKey{"minUpper", "minLower", "minNumeric", "minSpecial"}

type standin struct {
	pulumirpc.UnimplementedResourceProviderServer
}

func main() {
	err := provider.Main("random", func(*provider.HostClient) (pulumirpc.ResourceProviderServer, error) {
		return &standin{}, nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// ----------------------------------------------------------------------------- helpers

func onlyPassword(typ, urn string) error {
	if typ == "" && urn != "" {
		typ = string(resource.URN(urn).Type())
	}
	if typ == passwordType {
		return nil
	}
	return status.Errorf(codes.Unimplemented,
		"the test-only random stand-in implements only RandomPassword (%s), not %s", passwordType, typ)
}

var (
	keep  = plugin.MarshalOptions{KeepUnknowns: true, KeepSecrets: true, SkipNulls: true}
	plain = plugin.MarshalOptions{KeepUnknowns: true, KeepSecrets: false, SkipNulls: true}
)

func unmarshal(s *structpb.Struct, opts plugin.MarshalOptions) (resource.PropertyMap, error) {
	props, err := plugin.UnmarshalProperties(s, opts)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cannot read the properties: %v", err)
	}
	return props, nil
}

func marshal(props resource.PropertyMap) (*structpb.Struct, error) {
	return plugin.MarshalProperties(props, keep)
}

// unsecret strips a top-level secret wrapper (inputs may be secret: Configure accepts secrets).
func unsecret(v resource.PropertyValue) resource.PropertyValue {
	for v.IsSecret() {
		v = v.SecretValue().Element
	}
	return v
}

// set reports whether props[k] is set (absent and null are "not set").
func set(props resource.PropertyMap, k resource.PropertyKey) bool {
	v, ok := props[k]
	return ok && !unsecret(v).IsNull()
}

func isUnknown(props resource.PropertyMap, k resource.PropertyKey) bool {
	v, ok := props[k]
	return ok && unsecret(v).ContainsUnknowns()
}

func boolOf(props resource.PropertyMap, k resource.PropertyKey) bool {
	v := unsecret(props[k])
	return v.IsBool() && v.BoolValue()
}

// intOf reads a whole number; ok is false if it is missing, unknown, not a number or not whole.
func intOf(props resource.PropertyMap, k resource.PropertyKey) (int64, bool) {
	v := unsecret(props[k])
	if !v.IsNumber() {
		return 0, false
	}
	n := v.NumberValue()
	if n != math.Trunc(n) || math.IsInf(n, 0) || n > math.MaxInt32 || n < math.MinInt32 {
		return 0, false
	}
	return int64(n), true
}

// tfName gives the real (Terraform) attribute name the real plugin's messages use.
func tfName(k resource.PropertyKey) string {
	var b strings.Builder
	for _, r := range string(k) {
		if r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ----------------------------------------------------------------------------- plugin and provider config

func (*standin) GetPluginInfo(context.Context, *pbempty.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version}, nil
}

func (*standin) GetSchema(context.Context, *pulumirpc.GetSchemaRequest) (*pulumirpc.GetSchemaResponse, error) {
	prop := func(typ, desc string) map[string]any { return map[string]any{"type": typ, "description": desc} }
	inputs := map[string]any{
		"keepers":         map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "string"}, "description": "Arbitrary values that, when changed, replace the password."},
		"length":          prop("integer", "The length of the password (>= 1 and >= the sum of the min* counts)."),
		"lower":           prop("boolean", "Include lowercase letters. Default true."),
		"upper":           prop("boolean", "Include uppercase letters. Default true."),
		"numeric":         prop("boolean", "Include digits. Default true."),
		"number":          map[string]any{"type": "boolean", "description": "Deprecated: use numeric.", "deprecationMessage": "**NOTE**: This is deprecated, use `numeric` instead."},
		"special":         prop("boolean", "Include special characters (`"+defaultSpecial+"`). Default true."),
		"minLower":        prop("integer", "Minimum number of lowercase letters. Default 0."),
		"minUpper":        prop("integer", "Minimum number of uppercase letters. Default 0."),
		"minNumeric":      prop("integer", "Minimum number of digits. Default 0."),
		"minSpecial":      prop("integer", "Minimum number of special characters. Default 0."),
		"overrideSpecial": prop("string", "The special characters to use instead of the default ones."),
	}
	outputs := map[string]any{
		"result":     map[string]any{"type": "string", "secret": true, "description": "The generated password."},
		"bcryptHash": map[string]any{"type": "string", "secret": true, "description": "A bcrypt hash of the password (its first 72 bytes)."},
	}
	for k, v := range inputs {
		outputs[k] = v
	}
	schema := map[string]any{
		"name":        "random",
		"version":     version,
		"description": "TEST-ONLY stand-in for pulumi-random: RandomPassword only.",
		"resources": map[string]any{
			passwordType: map[string]any{
				"description":     "A random password (test-only stand-in).",
				"properties":      outputs,
				"required":        []string{"bcryptHash", "length", "lower", "minLower", "minNumeric", "minSpecial", "minUpper", "number", "numeric", "result", "special", "upper"},
				"inputProperties": inputs,
				"requiredInputs":  []string{"length"},
			},
		},
	}
	b, err := json.Marshal(schema)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.GetSchemaResponse{Schema: string(b)}, nil
}

func (*standin) CheckConfig(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	return &pulumirpc.CheckResponse{Inputs: req.GetNews()}, nil
}

func (*standin) DiffConfig(context.Context, *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	return &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE}, nil
}

func (*standin) Configure(context.Context, *pulumirpc.ConfigureRequest) (*pulumirpc.ConfigureResponse, error) {
	return &pulumirpc.ConfigureResponse{AcceptSecrets: true, SupportsPreview: true}, nil
}

func (*standin) Cancel(context.Context, *pbempty.Empty) (*pbempty.Empty, error) {
	return &pbempty.Empty{}, nil
}

func (*standin) Invoke(_ context.Context, req *pulumirpc.InvokeRequest) (*pulumirpc.InvokeResponse, error) {
	return nil, status.Errorf(codes.Unimplemented,
		"the test-only random stand-in implements only RandomPassword, not the function %s", req.GetTok())
}

// ----------------------------------------------------------------------------- RandomPassword

// checkPassword applies the real plugin's defaults to news and validates them, as its Check does.
func checkPassword(news resource.PropertyMap) (resource.PropertyMap, []*pulumirpc.CheckFailure) {
	in := news.Copy()
	var failures []*pulumirpc.CheckFailure
	fail := func(k resource.PropertyKey, format string, args ...any) {
		failures = append(failures, &pulumirpc.CheckFailure{Property: string(k), Reason: fmt.Sprintf(format, args...)})
	}
	for _, k := range []resource.PropertyKey{"lower", "upper", "special"} {
		if !set(in, k) {
			in[k] = resource.NewBoolProperty(true)
		}
	}
	// `number` is the deprecated alias of `numeric`: the real plugin keeps the two equal.
	switch {
	case set(in, "number") && set(in, "numeric"):
		a, b := unsecret(in["number"]), unsecret(in["numeric"])
		if a.IsBool() && b.IsBool() && a.BoolValue() != b.BoolValue() {
			fail("numeric", "Number and numeric are both configured with different values")
		}
	case set(in, "number"):
		in["numeric"] = in["number"]
	case set(in, "numeric"):
		in["number"] = in["numeric"]
	default:
		in["number"], in["numeric"] = resource.NewBoolProperty(true), resource.NewBoolProperty(true)
	}
	sum, sumKnown := int64(0), true
	for _, k := range minKeys {
		if !set(in, k) {
			in[k] = resource.NewNumberProperty(0)
		}
		if isUnknown(in, k) {
			sumKnown = false
			continue
		}
		n, ok := intOf(in, k)
		switch {
		case !ok:
			fail(k, "Attribute %s must be a whole number, got: %v", tfName(k), unsecret(in[k]).V)
			sumKnown = false
		case n < 0:
			fail(k, "Attribute %s value must be at least 0, got: %d", tfName(k), n)
			sumKnown = false
		default:
			sum += n
		}
	}
	switch {
	case !set(in, "length"):
		fail("length", "Missing required property 'length'")
	case isUnknown(in, "length"):
	default:
		n, ok := intOf(in, "length")
		switch {
		case !ok:
			fail("length", "Attribute length must be a whole number, got: %v", unsecret(in["length"]).V)
		case n < 1:
			fail("length", "Attribute length value must be at least 1, got: %d", n)
		case sumKnown && n < sum:
			fail("length", "Attribute length value must be at least sum of min_upper + min_lower + "+
				"min_numeric + min_special, got: %d", n)
		case sumKnown && n > sum && !anyClassOnOrUnknown(in):
			fail("length", "lower, upper, numeric and special are all false: no characters to fill "+
				"length %d beyond the %d required by the min* counts", n, sum)
		}
	}
	if set(in, "overrideSpecial") && !isUnknown(in, "overrideSpecial") && !unsecret(in["overrideSpecial"]).IsString() {
		fail("overrideSpecial", "Attribute override_special must be a string")
	}
	return in, failures
}

// anyClassOnOrUnknown: some character class is enabled, or not yet known (then Create decides).
func anyClassOnOrUnknown(in resource.PropertyMap) bool {
	for _, k := range []resource.PropertyKey{"lower", "upper", "numeric", "special"} {
		if isUnknown(in, k) || boolOf(in, k) {
			return true
		}
	}
	return false
}

func (*standin) Check(_ context.Context, req *pulumirpc.CheckRequest) (*pulumirpc.CheckResponse, error) {
	if err := onlyPassword(req.GetType(), req.GetUrn()); err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews(), keep)
	if err != nil {
		return nil, err
	}
	in, failures := checkPassword(news)
	inputs, err := marshal(in)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CheckResponse{Inputs: inputs, Failures: failures}, nil
}

// Diff: every input of the real RandomPassword forces a replacement (a new password).
func (*standin) Diff(_ context.Context, req *pulumirpc.DiffRequest) (*pulumirpc.DiffResponse, error) {
	if err := onlyPassword(req.GetType(), req.GetUrn()); err != nil {
		return nil, err
	}
	oldStruct := req.GetOldInputs()
	if oldStruct == nil || len(oldStruct.GetFields()) == 0 {
		oldStruct = req.GetOlds()
	}
	olds, err := unmarshal(oldStruct, plain)
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews(), plain)
	if err != nil {
		return nil, err
	}
	ignored := map[string]bool{}
	for _, k := range req.GetIgnoreChanges() {
		ignored[k] = true
	}
	keys := map[resource.PropertyKey]bool{}
	for k := range olds {
		keys[k] = true
	}
	for k := range news {
		keys[k] = true
	}
	var replaces []string
	detailed := map[string]*pulumirpc.PropertyDiff{}
	for k := range keys {
		if outputKeys[k] || resource.IsInternalPropertyKey(k) || ignored[string(k)] {
			continue
		}
		o, n := olds[k], news[k]
		var kind pulumirpc.PropertyDiff_Kind
		switch {
		case o.IsNull() && n.IsNull():
			continue
		case n.ContainsUnknowns():
			kind = pulumirpc.PropertyDiff_UPDATE_REPLACE
		case o.IsNull():
			kind = pulumirpc.PropertyDiff_ADD_REPLACE
		case n.IsNull():
			kind = pulumirpc.PropertyDiff_DELETE_REPLACE
		case o.DeepEquals(n):
			continue
		default:
			kind = pulumirpc.PropertyDiff_UPDATE_REPLACE
		}
		replaces = append(replaces, string(k))
		detailed[string(k)] = &pulumirpc.PropertyDiff{Kind: kind, InputDiff: true}
	}
	if len(replaces) == 0 {
		return &pulumirpc.DiffResponse{Changes: pulumirpc.DiffResponse_DIFF_NONE, HasDetailedDiff: true}, nil
	}
	sort.Strings(replaces)
	return &pulumirpc.DiffResponse{
		Changes: pulumirpc.DiffResponse_DIFF_SOME, Replaces: replaces, Diffs: replaces,
		DetailedDiff: detailed, HasDetailedDiff: true,
	}, nil
}

// randomFrom draws n characters of chars uniformly with crypto/rand.
func randomFrom(chars string, n int64) ([]byte, error) {
	if n <= 0 {
		return nil, nil
	}
	if chars == "" {
		return nil, errors.New("no characters to choose from")
	}
	out := make([]byte, n)
	max := big.NewInt(int64(len(chars)))
	for i := range out {
		j, err := rand.Int(rand.Reader, max)
		if err != nil {
			return nil, err
		}
		out[i] = chars[j.Int64()]
	}
	return out, nil
}

// generate follows the real plugin: min* characters of each class (whether or not the class is
// enabled), the rest from the enabled classes, then a shuffle.
func generate(in resource.PropertyMap) (string, error) {
	special := defaultSpecial
	if v := unsecret(in["overrideSpecial"]); v.IsString() && v.StringValue() != "" {
		special = v.StringValue()
	}
	length, ok := intOf(in, "length")
	if !ok || length < 1 {
		return "", fmt.Errorf("length must be a whole number >= 1")
	}
	classes := []struct {
		key, min resource.PropertyKey
		chars    string
	}{
		{"upper", "minUpper", upperChars}, {"lower", "minLower", lowerChars},
		{"numeric", "minNumeric", numericChars}, {"special", "minSpecial", special},
	}
	var result []byte
	var pool string
	for _, c := range classes {
		n, _ := intOf(in, c.min)
		s, err := randomFrom(c.chars, n)
		if err != nil {
			return "", fmt.Errorf("%s: %w", c.min, err)
		}
		result = append(result, s...)
		if boolOf(in, c.key) {
			pool += c.chars
		}
	}
	rest, err := randomFrom(pool, length-int64(len(result)))
	if err != nil {
		return "", fmt.Errorf("lower, upper, numeric and special are all false: %w", err)
	}
	result = append(result, rest...)
	for i := len(result) - 1; i > 0; i-- { // Fisher-Yates
		j, err := rand.Int(rand.Reader, big.NewInt(int64(i+1)))
		if err != nil {
			return "", err
		}
		result[i], result[j.Int64()] = result[j.Int64()], result[i]
	}
	return string(result), nil
}

func bcryptHash(password string) (string, error) {
	b := []byte(password)
	if len(b) > bcryptMaxBytes {
		b = b[:bcryptMaxBytes]
	}
	h, err := bcrypt.GenerateFromPassword(b, bcrypt.DefaultCost)
	return string(h), err
}

func (*standin) Create(_ context.Context, req *pulumirpc.CreateRequest) (*pulumirpc.CreateResponse, error) {
	if err := onlyPassword(req.GetType(), req.GetUrn()); err != nil {
		return nil, err
	}
	in, err := unmarshal(req.GetProperties(), keep)
	if err != nil {
		return nil, err
	}
	out := in.Copy()
	if req.GetPreview() || in.ContainsUnknowns() {
		// Preview: the password is not generated yet.
		out["result"] = resource.MakeComputed(resource.NewStringProperty(""))
		out["bcryptHash"] = resource.MakeComputed(resource.NewStringProperty(""))
	} else {
		password, err := generate(in)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "RandomPassword: %v", err)
		}
		hash, err := bcryptHash(password)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "RandomPassword: bcrypt: %v", err)
		}
		out["result"] = resource.MakeSecret(resource.NewStringProperty(password))
		out["bcryptHash"] = resource.MakeSecret(resource.NewStringProperty(hash))
	}
	props, err := marshal(out)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.CreateResponse{Id: passwordID, Properties: props}, nil
}

func (*standin) Read(_ context.Context, req *pulumirpc.ReadRequest) (*pulumirpc.ReadResponse, error) {
	if err := onlyPassword(req.GetType(), req.GetUrn()); err != nil {
		return nil, err
	}
	return &pulumirpc.ReadResponse{Id: req.GetId(), Properties: req.GetProperties(), Inputs: req.GetInputs()}, nil
}

// Update is not normally called (every input change replaces); keep the password if it is.
func (*standin) Update(_ context.Context, req *pulumirpc.UpdateRequest) (*pulumirpc.UpdateResponse, error) {
	if err := onlyPassword(req.GetType(), req.GetUrn()); err != nil {
		return nil, err
	}
	olds, err := unmarshal(req.GetOlds(), keep)
	if err != nil {
		return nil, err
	}
	news, err := unmarshal(req.GetNews(), keep)
	if err != nil {
		return nil, err
	}
	out := news.Copy()
	for k := range outputKeys {
		if v, ok := olds[k]; ok && k != "id" {
			out[k] = resource.MakeSecret(unsecret(v))
		}
	}
	props, err := marshal(out)
	if err != nil {
		return nil, err
	}
	return &pulumirpc.UpdateResponse{Properties: props}, nil
}

func (*standin) Delete(_ context.Context, req *pulumirpc.DeleteRequest) (*pbempty.Empty, error) {
	if err := onlyPassword(req.GetType(), req.GetUrn()); err != nil {
		return nil, err
	}
	return &pbempty.Empty{}, nil
}
