use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done http_client);
use Future::AsyncAwait;
use Scalar::Util qw(blessed);
use IO::Socket::IP;

# Every http scope the app sees is kept here, newest last.
my @scopes;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    push @scopes, $scope;
    await $receive->();
    my $body = "seen $scope->{method}";
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};

my ($server, $port) = start_server(app => $app);

# Sends one request on a fresh connection, checks the reply is a 200 and
# returns the scope the app saw for it.
sub scope_for {
    my ($request, %o) = @_;
    my $before = @scopes;
    my $raw = raw_exchange($port, $request, timeout => 5, %o)->get;
    my @r = parse_responses($raw);
    is $r[0]{status}, 200, 'the request got a 200';
    is scalar(@scopes), $before + 1, 'the app saw exactly one scope';
    return $scopes[-1];
}

subtest 'the fixed keys of an HTTP/1.1 scope' => sub {
    my $s = scope_for("GET /hello/world?a=1&b=2 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n");
    is $s->{type}, 'http', 'type';
    is_deeply $s->{pagi}, { version => '0.3', spec_version => '0.3' }, 'pagi version and spec_version';
    ok !ref($s->{pagi}{version}) && $s->{pagi}{version} eq '0.3', 'pagi.version is a plain string';
    is $s->{http_version}, '1.1', 'http_version';
    is $s->{method}, 'GET', 'method';
    is $s->{scheme}, 'http', 'scheme';
    is $s->{path}, '/hello/world', 'path has no query';
    is $s->{raw_path}, '/hello/world', 'raw_path';
    is $s->{query_string}, 'a=1&b=2', 'query_string';
    is $s->{root_path}, '', 'root_path is empty';
    is ref($s->{state}), 'HASH', 'state is a hash';
    is_deeply $s->{state}, {}, 'state is empty without lifespan state';
    is ref($s->{extensions}), 'HASH', 'extensions is a hash';
    ok !exists $s->{pagi}{features}, 'no pagi.features (removed in 0.3)';
    ok !exists $s->{pagi}{loop}, 'no loop in the pagi hash';
    for my $key (qw(type pagi http_version method scheme path raw_path query_string root_path headers client server state extensions)) {
        ok exists $s->{$key}, "scope has '$key'";
    }
};

subtest 'HTTP/1.0 request gives http_version 1.0' => sub {
    my $s = scope_for("GET /old HTTP/1.0\r\n\r\n");
    is $s->{http_version}, '1.0', 'http_version';
    is $s->{path}, '/old', 'path';
    is_deeply $s->{headers}, [], 'no headers were sent, none are reported';
};

subtest 'method is passed through as sent' => sub {
    for my $method (qw(POST PUT DELETE PATCH OPTIONS)) {
        my $s = scope_for("$method /m HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        is $s->{method}, $method, "method $method";
    }
};

subtest 'path is percent-decoded then UTF-8 decoded' => sub {
    my $s = scope_for("GET /caf%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{path}, "/caf\x{e9}", 'path is the character string /café';
    is length($s->{path}), 5, 'five characters, not six bytes';
    ok utf8::is_utf8($s->{path}), 'path carries the utf8 flag';
    is $s->{raw_path}, '/caf%C3%A9', 'raw_path stays encoded';
    ok !utf8::is_utf8($s->{raw_path}), 'raw_path is bytes';

    $s = scope_for("GET /%E2%98%BA/x%20y HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{path}, "/\x{263A}/x y", 'three-byte sequence and %20 decoded';
    is $s->{raw_path}, '/%E2%98%BA/x%20y', 'raw_path stays encoded';

    $s = scope_for("GET /a%2Fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{path}, '/a/b', '%2F is decoded in path';
    is $s->{raw_path}, '/a%2Fb', 'but kept in raw_path';
};

subtest 'path that is not valid UTF-8 stays bytes' => sub {
    my $s = scope_for("GET /%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{path}, "/\xFF", 'path is the byte 0xFF';
    is length($s->{path}), 2, 'two bytes';
    ok !utf8::is_utf8($s->{path}), 'no utf8 flag';
    is $s->{raw_path}, '/%FF', 'raw_path';

    $s = scope_for("GET /ok%C3%28 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{path}, "/ok\xC3(", 'truncated sequence is kept as bytes, no replacement character';
    ok !utf8::is_utf8($s->{path}), 'no utf8 flag';
};

subtest 'query_string is raw bytes' => sub {
    my $s = scope_for("GET /q?name=caf%C3%A9&x=a+b&e= HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{query_string}, 'name=caf%C3%A9&x=a+b&e=', 'still percent-encoded';
    is $s->{path}, '/q', 'path excludes the query';

    $s = scope_for("GET /noquery HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{query_string}, '', 'empty string when absent';
    ok defined $s->{query_string}, 'defined when absent';

    $s = scope_for("GET /empty? HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    is $s->{query_string}, '', 'empty string after a bare ?';
    is $s->{path}, '/empty', 'path without the ?';
};

subtest 'headers keep wire order and duplicates, names lower-cased' => sub {
    my $s = scope_for("GET /h HTTP/1.1\r\nHost: h.test\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3\r\nX-Spaced:   padded value  \r\nConnection: close\r\n\r\n");
    is_deeply $s->{headers}, [
        [ 'host', 'h.test' ],
        [ 'x-a', '1' ],
        [ 'x-b', '2' ],
        [ 'x-a', '3' ],
        [ 'x-spaced', 'padded value' ],
        [ 'connection', 'close' ],
    ], 'exact pairs in wire order';
    ok !(grep { ref $_ ne 'ARRAY' || @$_ != 2 } @{ $s->{headers} }), 'every entry is a two-element pair';
};

subtest 'header values are opaque bytes' => sub {
    my $s = scope_for("GET /b HTTP/1.1\r\nHost: x\r\nX-Bytes: caf\xC3\xA9\r\nConnection: close\r\n\r\n");
    my ($v) = map { $_->[1] } grep { $_->[0] eq 'x-bytes' } @{ $s->{headers} };
    is $v, "caf\xC3\xA9", 'value is the raw bytes';
    ok !utf8::is_utf8($v), 'not decoded';
};

subtest 'several Cookie headers become one cookie pair' => sub {
    my $s = scope_for("GET /c HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\nX-Mid: m\r\nCookie: b=2; c=3\r\ncookie: d=4\r\nConnection: close\r\n\r\n");
    my @cookies = grep { $_->[0] eq 'cookie' } @{ $s->{headers} };
    is scalar(@cookies), 1, 'exactly one cookie pair';
    is $cookies[0][1], 'a=1; b=2; c=3; d=4', 'values joined with "; " in order';
    is_deeply [ map { $_->[0] } @{ $s->{headers} } ], [qw(host cookie x-mid connection)], 'other headers keep their order';

    $s = scope_for("GET /c1 HTTP/1.1\r\nHost: x\r\nCookie: only=1\r\nConnection: close\r\n\r\n");
    is_deeply [ grep { $_->[0] eq 'cookie' } @{ $s->{headers} } ], [ [ 'cookie', 'only=1' ] ], 'a single cookie is unchanged';
};

subtest 'client and server addresses match the sockets' => sub {
    my $before = @scopes;
    my $c = open_conn($port);
    $c->write("GET /addr HTTP/1.1\r\nHost: x\r\n\r\n");
    $c->read_until(responses_done(1))->get;
    is scalar(@scopes), $before + 1, 'one scope';
    my $s = $scopes[-1];
    is ref($s->{client}), 'ARRAY', 'client is an array';
    is_deeply $s->{client}, [ '127.0.0.1', $c->sockport ], 'client is [ip, the client socket port]';
    is_deeply $s->{server}, [ '127.0.0.1', $port ], 'server is [ip, listening port]';
    ok $s->{client}[1] != $port, 'client port differs from the server port';

    # A second request on the same connection reports the same client.
    $c->write("GET /addr2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    $c->wait_eof->get;
    is_deeply $scopes[-1]{client}, [ '127.0.0.1', $c->sockport ], 'same client on the keep-alive request';
    $c->close;

    # Another connection has another port.
    my $c2 = open_conn($port);
    $c2->write("GET /addr3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    $c2->wait_eof->get;
    is $scopes[-1]{client}[1], $c2->sockport, 'second connection reports its own port';
    isnt $c2->sockport, $c->sockport, 'and it is a different port';
};

subtest 'state is a per-request shallow copy of the lifespan state' => sub {
    my $shared = { hits => 0 };
    my @req_states;
    my $lifespan_state;
    my $lapp = async sub {
        my ($scope, $receive, $send) = @_;
        if ($scope->{type} eq 'lifespan') {
            $lifespan_state = $scope->{state};
            my $ev = await $receive->();
            $scope->{state}{shared} = $shared;
            $scope->{state}{name}   = 'from-startup';
            await $send->({ type => 'lifespan.startup.complete' });
            $ev = await $receive->();
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
        push @req_states, $scope->{state};
        $scope->{state}{shared}{hits}++;
        $scope->{state}{name} = 'changed-by-request';
        await $send->({ type => 'http.response.start', status => 200, headers => [] });
        await $send->({ type => 'http.response.body', body => 'ok' });
    };
    my ($srv, $p) = start_server(app => $lapp);
    for (1 .. 2) {
        my $raw = raw_exchange($p, "GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout => 5)->get;
        is((parse_responses($raw))[0]{status}, 200, 'request served');
    }
    is scalar(@req_states), 2, 'two request scopes';
    is $req_states[1]{name}, 'changed-by-request', 'the request saw its own top-level key';
    is $lifespan_state->{name}, 'from-startup', 'a top-level key set by a request does not reach the lifespan state';
    isnt $req_states[0], $lifespan_state, 'the request state is not the lifespan hash itself';
    isnt $req_states[0], $req_states[1], 'each request gets its own copy';
    is $req_states[0]{shared}, $shared, 'values are shared by reference';
    is $shared->{hits}, 2, 'mutations through a shared value are visible';
    stop_server($srv);
};

subtest 'absolute-form request target' => sub {
    my $s = scope_for("GET http://example.com/p?q=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    is $s->{path}, '/p', 'path without scheme and authority';
    is $s->{raw_path}, '/p', 'raw_path without scheme and authority';
    is $s->{query_string}, 'q=1', 'query_string';

    $s = scope_for("GET http://example.com HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    is $s->{path}, '/', 'authority only gives path /';
    is $s->{query_string}, '', 'and no query';
};

subtest 'scope seen through a real client (Net::Async::HTTP)' => sub {
    my $http = http_client();
    my $before = @scopes;
    my $res = $http->do_request(
        method  => 'GET',
        uri     => URI->new("http://127.0.0.1:$port/caf%C3%A9/x?k=v%20w"),
        headers => [ 'X-Client' => 'nah' ],
        timeout => 5,
    )->get;
    is $res->code, 200, 'status 200';
    is $res->content, 'seen GET', 'body';
    is scalar(@scopes), $before + 1, 'one scope';
    my $s = $scopes[-1];
    is $s->{path}, "/caf\x{e9}/x", 'decoded path';
    is $s->{raw_path}, '/caf%C3%A9/x', 'raw_path';
    is $s->{query_string}, 'k=v%20w', 'query_string';
    is $s->{http_version}, '1.1', 'http_version';
    is_deeply [ grep { $_->[0] eq 'x-client' } @{ $s->{headers} } ], [ [ 'x-client', 'nah' ] ], 'client header arrives';
    is $s->{client}[0], '127.0.0.1', 'client ip';
};

# Whether this machine has an IPv6 loopback: a socket can be bound on ::1
# (independently of the server under test). Under CI=true it must have one.
sub have_ipv6_loopback {
    my $probe = IO::Socket::IP->new(LocalHost => '::1', LocalPort => 0, Listen => 1, ReuseAddr => 1);
    return $probe ? 1 : (0, $@ || "$!");
}

subtest 'IPv6 listener on ::1' => sub {
    my ($v6, $why) = have_ipv6_loopback();
    unless ($v6) {
        return fail("CI=true and this machine cannot bind ::1 ($why): CI needs an IPv6 loopback")
            if ($ENV{CI} // '') eq 'true';
        plan skip_all => "no IPv6 loopback here: cannot bind ::1 ($why)";
    }
    # ::1 works on this machine, so the server must start on it.
    my ($srv6, $p6) = eval { start_server(app => $app, host => '::1') };
    ok($srv6, 'the server listens on ::1') or return diag($@);
    my $before = @scopes;
    my $c = eval { open_conn($p6, host => '::1') };
    ok($c, 'a client connects to [::1]') or do { diag($@); stop_server($srv6); return };
    $c->write("GET /six?v=6 HTTP/1.1\r\nHost: [::1]:$p6\r\nConnection: close\r\n\r\n");
    my $raw = $c->wait_eof->get;
    is((parse_responses($raw))[0]{status}, 200, 'served over IPv6');
    is scalar(@scopes), $before + 1, 'one scope';
    my $s = $scopes[-1];
    is_deeply $s->{client}, [ '::1', $c->sockport ], 'client is [::1, client port]';
    is_deeply $s->{server}, [ '::1', $p6 ], 'server is [::1, port]';
    is $s->{path}, '/six', 'path';
    is $s->{query_string}, 'v=6', 'query';
    stop_server($srv6);
};

stop_server($server);
done_testing;
