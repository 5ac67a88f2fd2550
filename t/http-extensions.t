# Extensions (PAGI-SPEC 4) and outbound event validation (validate_events):
# what $scope->{extensions} advertises, that unadvertised extension events
# are refused, that fullflush pushes a chunk out at once, and that a server
# checking events names the event and the field of every mistake.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

use PAGI::Test::Server qw(loop start_server stop_server parse_responses wait_for);
use PAGI::Test::HTTP qw(open_conn responses_done);
use Future::AsyncAwait;
use PAGI::Server;
use PAGI::Server::Config;

my $loop = loop();

sub get_req { "GET $_[0] HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" }

# One request on a fresh connection; returns the parsed response.
sub fetch {
    my ($port, $path) = @_;
    my $conn = open_conn($port);
    $conn->write(get_req($path));
    my $raw = $conn->wait_eof(5)->get;
    return (parse_responses($raw))[0];
}

# The failure message of a $send Future, or 'ok' when it succeeded.
async sub outcome {
    my ($f) = @_;
    my $ok = eval { await $f; 1 };
    return $ok ? 'ok' : ($@ =~ s/\s+\z//r);
}

subtest 'no extensions without configuration: no fullflush, no tls, http.fullflush refused' => sub {
    my (%ext, $flush);
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        %ext = (is_hash => ref $scope->{extensions} eq 'HASH' ? 1 : 0, keys => [ sort keys %{ $scope->{extensions} // {} } ]);
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        $flush = await outcome($send->({ type => 'http.fullflush' }));
        await $send->({ type => 'http.response.body', body => 'done' });
    };
    my ($server, $port) = start_server(app => $app);
    my $res = fetch($port, '/');
    is($res->{status}, 200, 'the response still completes');
    is($res->{body}, 'done', 'with its body');
    is($ext{is_hash}, 1, '$scope->{extensions} is a hash');
    ok(!grep({ $_ eq 'fullflush' } @{ $ext{keys} }), 'fullflush is not advertised');
    ok(!grep({ $_ eq 'tls' } @{ $ext{keys} }), 'tls is not advertised on a cleartext connection');
    like($flush, qr/Unrecognized event type 'http\.fullflush'/, 'sending http.fullflush fails naming the event type');
    stop_server($server);
};

subtest 'extensions => { fullflush => {} }: advertised, and it pushes a chunk out at once' => sub {
    my (%ext, $flush, $waiting, $finished);
    my $release = $loop->new_future;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        %ext = %{ $scope->{extensions} };
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => 'first chunk;', more => 1 });
        $flush = await outcome($send->({ type => 'http.fullflush' }));
        $waiting = 1;
        # Wait for the test to say the client saw the chunk (bounded by a timer).
        await Future->wait_any($release, $loop->delay_future(after => 5));
        await $send->({ type => 'http.response.body', body => 'second chunk' });
        $finished = 1;
    };
    my ($server, $port) = start_server(app => $app, extensions => { fullflush => {} });
    my $conn = open_conn($port);
    $conn->write(get_req('/stream'));
    my $early = $conn->read_until(qr/first chunk;/, 3)->get;
    ok($waiting && !$finished, 'the client received the first chunk while the app was still waiting');
    like($early, qr{\AHTTP/1\.1 200 }, 'after the response head');
    $release->done;
    my $raw = $conn->wait_eof(5)->get;
    my ($res) = parse_responses($raw);
    is($res->{body}, 'first chunk;second chunk', 'the whole body arrived');
    is_deeply($ext{fullflush}, {}, 'fullflush is advertised with {}');
    ok(!exists $ext{tls}, 'tls is still not advertised');
    is($flush, 'ok', 'http.fullflush succeeded');
    stop_server($server);
};

subtest 'extensions the server cannot provide croak at new, naming them' => sub {
    for my $name (qw(tls bogus)) {
        my $server = eval { PAGI::Server->new(app => sub { }, port => 0, quiet => 1, extensions => { $name => {} }) };
        my $error = $@;
        ok(!$server, "extensions => { $name => {} } is refused");
        like($error, qr/extensions/, '  the message names the option');
        like($error, qr/'\Q$name\E'/, "  and the extension '$name'");
    }
};

# [ description, bad event(s) sent instead of the valid one, message pattern ]
my @BAD = (
    [ "status '200 OK'", { type => 'http.response.start', status => '200 OK', headers => [] },
      qr/^http\.response\.start: 'status' must be an integer/ ],
    [ 'a header that is not a pair', { type => 'http.response.start', status => 200, headers => [ ['a'] ] },
      qr/^http\.response\.start: 'headers' entry 0 must be a \[name, value\] pair/ ],
    [ 'a header with an undefined name', { type => 'http.response.start', status => 200, headers => [ [ undef, 'x' ] ] },
      qr/^http\.response\.start: 'headers' entry 0 has an undefined name/ ],
    [ "trailers 'x'", { type => 'http.response.start', status => 200, headers => [], trailers => 'x' },
      qr/^http\.response\.start: 'trailers' must be 0 or 1/ ],
    [ 'a body that is an array', { type => 'http.response.body', body => [1] },
      qr/^http\.response\.body: 'body' must be a byte string, not a reference/ ],
    [ 'a body with wide characters', { type => 'http.response.body', body => "\x{263A}" },
      qr/^http\.response\.body: 'body' must be bytes/ ],
    [ "more 'yes'", { type => 'http.response.body', body => 'x', more => 'yes' },
      qr/^http\.response\.body: 'more' must be 0 or 1/ ],
    [ 'offset -1', { type => 'http.response.body', file => $0, offset => -1 },
      qr/^http\.response\.body: 'offset' must be a non-negative integer/ ],
);

subtest 'validate_events => 1: each mistyped field fails $send naming the event and the field' => sub {
    my %result;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        my ($i) = $scope->{path} =~ m{^/bad/(\d+)$};
        my $bad = $BAD[$i][1];
        my $start = { type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] };
        if ($bad->{type} eq 'http.response.start') {
            $result{$i} = await outcome($send->($bad));
            await $send->($start);
        }
        else {
            await $send->($start);
            $result{$i} = await outcome($send->($bad));
        }
        await $send->({ type => 'http.response.body', body => "fine $i" });
    };
    my ($server, $port) = start_server(app => $app, validate_events => 1);
    for my $i (0 .. $#BAD) {
        my ($what, undef, $pattern) = @{ $BAD[$i] };
        my $res = fetch($port, "/bad/$i");
        like($result{$i} // 'not sent', $pattern, "$what: refused with a message naming the event and field");
        is($res->{status}, 200, "$what: the response the app sent afterwards went out");
        is($res->{body}, "fine $i", "$what: and nothing of the refused event reached the wire");
    }
    stop_server($server);
};

subtest 'validate_events => 1: unknown extra fields in valid events are accepted' => sub {
    my @results;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        push @results, await outcome($send->({ type => 'http.response.start', status => 201,
            headers => [ [ 'content-type', 'text/plain' ] ], 'x-note' => 'hello', custom => { deep => [1] } }));
        push @results, await outcome($send->({ type => 'http.response.body', body => 'a', more => 1, extra => [ 1, 2 ] }));
        push @results, await outcome($send->({ type => 'http.response.body', body => 'b', more => 0, 'x-trace-id' => 42 }));
    };
    my ($server, $port) = start_server(app => $app, validate_events => 1);
    my $res = fetch($port, '/');
    is_deeply(\@results, [qw(ok ok ok)], 'every event with extra fields was accepted');
    is($res->{status}, 201, 'status as sent');
    is($res->{body}, 'ab', 'body as sent');
    stop_server($server);
};

subtest 'validate_events defaults on in development mode, off otherwise' => sub {
    my %cases = (development => 1, production => 0, none => 0, '' => 0);
    for my $mode (sort keys %cases) {
        local $ENV{PAGI_ENV} = $mode;
        delete $ENV{PAGI_ENV} if $mode eq '';
        my $config = PAGI::Server::Config->new(app => sub { });
        is($config->{validate_events}, $cases{$mode},
            'PAGI_ENV=' . ($mode eq '' ? '(unset)' : $mode) . ": validate_events is $cases{$mode}");
    }
    {
        local $ENV{PAGI_ENV} = 'development';
        my $config = PAGI::Server::Config->new(app => sub { }, validate_events => 0);
        is($config->{validate_events}, 0, 'an explicit validate_events => 0 wins over development mode');
    }

    # The mode is read when the server is built: a server built in development
    # mode keeps checking after PAGI_ENV changed, and one built without it does not.
    my %result;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
        my $r = await outcome($send->({ type => 'http.response.body', body => 'x', more => 'yes' }));
        $result{ $scope->{path} } = $r;
        await $send->({ type => 'http.response.body', body => 'end' });
    };
    my ($dev, $dev_port);
    {
        local $ENV{PAGI_ENV} = 'development';
        ($dev, $dev_port) = start_server(app => $app);
    }
    my ($prod, $prod_port);
    {
        local $ENV{PAGI_ENV} = 'production';
        ($prod, $prod_port) = start_server(app => $app);
    }
    local $ENV{PAGI_ENV} = 'development';
    fetch($dev_port, '/dev');
    fetch($prod_port, '/prod');
    like($result{'/dev'} // '', qr/^http\.response\.body: 'more' must be 0 or 1/, 'the server built in development mode validates');
    is($result{'/prod'}, 'ok', 'the server built in production mode does not');
    stop_server($_) for $dev, $prod;
};

done_testing;
