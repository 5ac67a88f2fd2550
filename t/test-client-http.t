use strict;
use warnings;
use Test::More;
use Future::AsyncAwait;
use IO::Async::Loop;
use File::Temp qw(tempfile);
use PAGI::Test::Client;

# Bounded: every wait below has its own deadline; this is the backstop.
alarm 60;

# Reads the whole request body the way an app must: http.request events
# until more => 0.
async sub read_body {
    my ($receive) = @_;
    my ($body, @events) = ('');
    while (1) {
        my $ev = await $receive->();
        push @events, $ev;
        last unless $ev->{type} eq 'http.request';
        $body .= $ev->{body};
        last unless $ev->{more};
    }
    return ($body, \@events);
}

async sub reply {
    my ($send, $status, $headers, $body) = @_;
    await $send->({ type => 'http.response.start', status => $status, headers => $headers });
    await $send->({ type => 'http.response.body', body => $body });
}

my (@scopes, @bodies, @events);
my $echo = async sub {
    my ($scope, $receive, $send) = @_;
    die "unsupported scope type '$scope->{type}'\n" unless $scope->{type} eq 'http';
    push @scopes, $scope;
    my ($body, $events) = await read_body($receive);
    push @bodies, $body;
    push @events, $events;
    await reply($send, 200, [ [ 'content-type', 'text/plain; charset=utf-8' ] ], "got $scope->{method}");
};

subtest 'the scope follows PAGI-SPEC 2.1' => sub {
    my $client = PAGI::Test::Client->new(app => $echo);
    my $res = $client->get("/caf%C3%A9/x?a=1", query => { b => 'two words' });
    is $res->status, 200, 'status';
    my $s = $scopes[-1];
    is $s->{type}, 'http', 'type';
    is_deeply $s->{pagi}, { version => '0.3', spec_version => '0.3' }, 'pagi';
    is $s->{http_version}, '1.1', 'http_version';
    is $s->{method}, 'GET', 'method';
    is $s->{scheme}, 'http', 'scheme';
    is $s->{path}, "/caf\x{e9}/x", 'path is decoded to characters';
    is $s->{raw_path}, '/caf%C3%A9/x', 'raw_path stays encoded';
    is $s->{query_string}, 'a=1&b=two%20words', 'query_string joins the path query and the query option';
    is $s->{root_path}, '', 'root_path';
    is_deeply $s->{client}, [ '127.0.0.1', 40000 ], 'client';
    is_deeply $s->{server}, [ '127.0.0.1', 5000 ], 'server';
    is_deeply $s->{state}, {}, 'state';
    is_deeply $s->{extensions}, {}, 'extensions';
    is_deeply $s->{headers}, [ [ host => '127.0.0.1:5000' ] ], 'headers: a Host header';
    ok $s->{'pagi.connection'}->is_connected == 0, 'pagi.connection: not connected after the response';
    ok $s->{'pagi.connection'}->response_complete, 'pagi.connection: response complete';
    is_deeply $events[-1], [ { type => 'http.request', body => '', more => 0 } ], 'no body: one empty http.request';

    $client->get("/caf\x{e9}");
    is $scopes[-1]{raw_path}, '/caf%C3%A9', 'a character path is sent UTF-8 percent-encoded';
    is $scopes[-1]{path}, "/caf\x{e9}", '... and decoded back';

    my $custom = PAGI::Test::Client->new(app => $echo, scheme => 'https', root_path => '/app',
        server => [ 'example.test', 443 ], client => undef, headers => { 'X-Default' => 'd', 'X-Both' => 'default' });
    $custom->put('/p', headers => [ [ 'X-Both', 'mine' ], [ 'X-Multi', 1 ], [ 'X-Multi', 2 ] ]);
    $s = $scopes[-1];
    is $s->{scheme}, 'https', 'scheme option';
    is $s->{root_path}, '/app', 'root_path option';
    ok !exists $s->{client}, 'client => undef leaves the client key out';
    is_deeply $s->{headers}, [ [ host => 'example.test' ], [ 'x-default' => 'd' ], [ 'content-length' => 0 ],
        [ 'x-both' => 'mine' ], [ 'x-multi' => 1 ], [ 'x-multi' => 2 ] ],
        'headers: lower-case, duplicates kept, per-request ones replace defaults';
};

subtest 'request bodies arrive as sent' => sub {
    my $client = PAGI::Test::Client->new(app => $echo);
    $client->post('/json', json => { name => "J\x{fc}rgen", list => [ 1, 2 ] });
    my %h = map { @$_ } @{ $scopes[-1]{headers} };
    is $h{'content-type'}, 'application/json', 'json: content-type';
    is $bodies[-1], qq({"list":[1,2],"name":"J\xc3\xbcrgen"}), 'json: UTF-8 bytes, sorted keys';
    is $h{'content-length'}, length $bodies[-1], 'json: content-length counts bytes';

    $client->post('/form', form => { q => 'a b&c', multi => [ 'x', 'y' ], e => "\x{e9}" });
    %h = map { @$_ } @{ $scopes[-1]{headers} };
    is $h{'content-type'}, 'application/x-www-form-urlencoded', 'form: content-type';
    my %form;
    for (split /&/, $bodies[-1]) {
        my ($k, $v) = map { (my $x = $_) =~ tr/+/ /; $x =~ s/%([0-9A-F]{2})/chr hex $1/ge; $x } split /=/;
        push @{ $form{$k} }, $v;
    }
    is_deeply \%form, { q => ['a b&c'], multi => [ 'x', 'y' ], e => ["\xc3\xa9"] }, 'form: parses back to the values';

    $client->post('/upload', multipart => [ title => 'Hi', file => { filename => 'a.bin', content => "\x00\xff\r\n--", content_type => 'application/x-test' } ]);
    %h = map { @$_ } @{ $scopes[-1]{headers} };
    my ($boundary) = $h{'content-type'} =~ m{\Amultipart/form-data; boundary=(\S+)\z};
    ok $boundary, 'multipart: content-type with a boundary';
    my @parts = grep { length && $_ ne "--\r\n" } split /--\Q$boundary\E(?:\r\n)?/, $bodies[-1];
    is scalar @parts, 2, 'multipart: two parts';
    my %parts;
    for (@parts) {
        my ($head, $content) = split /\r\n\r\n/, $_, 2;
        $content =~ s/\r\n\z//;
        my ($name) = $head =~ /name="([^"]+)"/;
        $parts{$name} = { head => $head, content => $content };
    }
    is $parts{title}{content}, 'Hi', 'multipart: a plain field';
    is $parts{file}{content}, "\x00\xff\r\n--", 'multipart: the file content, byte for byte';
    like $parts{file}{head}, qr/filename="a\.bin"/, 'multipart: the filename';
    like $parts{file}{head}, qr{Content-Type: application/x-test}, 'multipart: the part content type';

    $client->post('/raw', body => "raw\x00bytes", headers => { 'Content-Type' => 'application/octet-stream' });
    is $bodies[-1], "raw\x00bytes", 'body: bytes as given';

    my $big = 'x' x 10_000;
    $client->post('/chunked', body => $big, chunk_size => 4096);
    is $bodies[-1], $big, 'chunk_size: the body is complete';
    is_deeply [ map { [ length $_->{body}, $_->{more} ] } @{ $events[-1] } ], [ [ 4096, 1 ], [ 4096, 1 ], [ 1808, 0 ] ],
        'chunk_size: three http.request events, more => 1 until the last';

    eval { $client->post('/x', json => {}, form => {}) };
    like $@, qr/only one of json, form, multipart and body/, 'two body options croak';
    eval { $client->post('/x', body => "\x{263a}") };
    like $@, qr/body must be bytes/, 'a character body croaks';
    eval { $client->get('/x', bogus => 1) };
    like $@, qr/GET: unknown option\(s\): bogus/, 'an unknown option croaks, naming it';
};

subtest 'http.disconnect after the response' => sub {
    my $seen;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'http';
        await $receive->();
        my $pending = $receive->();
        await reply($send, 204, [], '');
        $seen = await $pending;
    };
    my $res = PAGI::Test::Client->new(app => $app)->get('/');
    is $res->status, 204, 'status';
    is_deeply $seen, { type => 'http.disconnect' }, 'a pending receive gets http.disconnect once the response is complete';
};

subtest 'response accessors' => sub {
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'http';
        await $receive->();
        my $p = $scope->{path};
        return await reply($send, 302, [ [ 'Location', '/next' ] ], '') if $p eq '/redirect';
        return await reply($send, 200, [ [ 'content-type', 'application/json' ] ], '{"a":[1,{"b":null}]}') if $p eq '/json';
        return await reply($send, 200, [ [ 'content-type', 'text/html' ] ], '<p>not json</p>') if $p eq '/html';
        return await reply($send, 200, [ [ 'content-type', 'text/plain; charset=ISO-8859-1' ] ], "caf\xe9") if $p eq '/latin1';
        await reply($send, 404, [ [ 'x-a', 1 ], [ 'X-A', 2 ], [ 'content-type', 'text/plain' ] ], "caf\xc3\xa9");
    };
    my $client = PAGI::Test::Client->new(app => $app);
    my $res = $client->get('/redirect');
    ok $res->is_redirect, 'is_redirect';
    ok !$res->is_success, 'not is_success';
    is $res->location, '/next', 'location';
    $res = $client->get('/json');
    ok $res->is_success, 'is_success';
    is_deeply $res->json, { a => [ 1, { b => undef } ] }, 'json';
    is $res->content_type, 'application/json', 'content_type';
    $res = $client->get('/html');
    eval { $res->json };
    like $@, qr{response json: the body is not JSON \(status 200, content-type text/html\).*body: '<p>not json</p>'},
        'json on a non-JSON body croaks clearly';
    is $client->get('/latin1')->text, "caf\x{e9}", 'text decodes the charset';
    $res = $client->get('/other');
    is $res->status, 404, 'status';
    ok $res->is_error, 'is_error';
    is $res->header('x-a'), '1, 2', 'header joins the values, case-insensitively';
    is_deeply [ $res->header_values('X-A') ], [ 1, 2 ], 'header_values';
    is_deeply [ $res->headers ], [ [ 'x-a', 1 ], [ 'X-A', 2 ], [ 'content-type', 'text/plain' ] ], 'headers in order';
    is $res->content, "caf\xc3\xa9", 'content is bytes';
    is $res->text, "caf\x{e9}", 'text decodes UTF-8 by default';
    is $res->header('nope'), undef, 'absent header';
};

subtest 'streaming, trailers, file and fh bodies, HEAD' => sub {
    my ($fh_tmp, $file) = tempfile(UNLINK => 1);
    binmode $fh_tmp;
    print {$fh_tmp} '0123456789';
    close $fh_tmp;
    my $loop = IO::Async::Loop->new;
    my $app = async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'http';
        await $receive->();
        my $p = $scope->{path};
        if ($p eq '/stream') {
            await $send->({ type => 'http.response.start', status => 200, headers => [], trailers => 1 });
            for my $i (1 .. 3) {
                await $loop->delay_future(after => 0.01);    # a real wait on the loop between chunks
                await $send->({ type => 'http.response.body', body => "part$i;", more => 1 });
            }
            await $send->({ type => 'http.response.body', body => '', more => 0 });
            await $send->({ type => 'http.response.trailers', headers => [ [ 'x-checksum', 'abc' ] ] });
            return;
        }
        await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-length', 4 ] ] });
        if ($p eq '/file') {
            await $send->({ type => 'http.response.body', file => $file, offset => 2, length => 4 });
        }
        else {
            open my $fh, '<:raw', $file or die $!;
            await $send->({ type => 'http.response.body', fh => $fh, offset => 6 });
            close $fh;
        }
    };
    my $client = PAGI::Test::Client->new(app => $app);
    my $res = $client->get('/stream');
    is_deeply [ $res->chunks ], [ 'part1;', 'part2;', 'part3;', '' ], 'chunks: every body event in order';
    is $res->content, 'part1;part2;part3;', 'content joins them';
    is_deeply $res->trailers, [ [ 'x-checksum', 'abc' ] ], 'trailers';
    is $client->get('/file')->content, '2345', 'file body with offset and length';
    is $client->get('/fh')->content, '6789', 'fh body from an offset to EOF';
    $res = $client->head('/file');
    is $res->status, 200, 'HEAD: status';
    is $res->header('content-length'), 4, 'HEAD: headers';
    is $res->content, '', 'HEAD: no body, as on the wire';
};

# An app that sends one given event after a correct start (or instead of it).
sub bad_app {
    my (@events) = @_;
    return async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'http';
        await $receive->();
        for my $event (@events) { await $send->($event) }
    };
}

subtest 'bad events croak, naming the field' => sub {
    my $start = { type => 'http.response.start', status => 200, headers => [] };
    my @cases = (
        [ 'status not an integer', [ { type => 'http.response.start', status => 'OK' } ], qr/http\.response\.start: 'status' must be an integer/ ],
        [ 'status missing', [ { type => 'http.response.start' } ], qr/http\.response\.start: 'status' is required/ ],
        [ 'headers not an array', [ { type => 'http.response.start', status => 200, headers => { a => 1 } } ],
          qr/http\.response\.start: 'headers' must be an array reference of \[name, value\] pairs/ ],
        [ 'headers not pairs', [ { type => 'http.response.start', status => 200, headers => [ 'a', 'b' ] } ],
          qr/'headers' entry 0 must be a \[name, value\] pair/ ],
        [ 'CR LF in a header value', [ { type => 'http.response.start', status => 200, headers => [ [ 'x', "a\r\nb" ] ] } ],
          qr/'headers' entry 0 \('x'\): the value contains CR, LF or a null byte/ ],
        [ 'body before start', [ { type => 'http.response.body', body => 'x' } ], qr/http\.response\.body: sent before http\.response\.start/ ],
        [ 'start twice', [ $start, $start ], qr/http\.response\.start: sent twice/ ],
        [ 'body a reference', [ $start, { type => 'http.response.body', body => [] } ], qr/http\.response\.body: 'body' must be a byte string/ ],
        [ 'body with characters', [ $start, { type => 'http.response.body', body => "\x{263a}" } ], qr/'body' must be bytes/ ],
        [ 'body and file', [ $start, { type => 'http.response.body', body => 'x', file => '/etc/hostname' } ], qr/only one of 'body', 'file' and 'fh'/ ],
        [ 'file missing', [ $start, { type => 'http.response.body', file => '/nonexistent/file' } ], qr{cannot open file '/nonexistent/file'} ],
        [ 'body after the end', [ $start, { type => 'http.response.body', body => 'a' }, { type => 'http.response.body', body => 'b' } ],
          qr/sent after the final body/ ],
        [ 'trailers not announced', [ $start, { type => 'http.response.body', body => '' }, { type => 'http.response.trailers' } ],
          qr/did not announce them \(trailers => 1\)/ ],
        [ 'unknown type', [ { type => 'http.response.bogus' } ], qr/Unrecognized event type 'http\.response\.bogus' for http protocol/ ],
        [ 'fullflush without the extension', [ { type => 'http.fullflush' } ], qr/http\.fullflush: the fullflush extension is not advertised/ ],
        [ 'not a hash', [ [] ], qr/send: the event must be a hash reference/ ],
    );
    for my $case (@cases) {
        my ($name, $events, $re) = @$case;
        my $client = PAGI::Test::Client->new(app => bad_app(@$events));
        eval { $client->get('/bad') };
        like $@, qr/\APAGI::Test::Client: GET \/bad: .*$re/s, $name;
        like $@, qr/at \S*test-client-http\.t line/, "$name: reported at the test's line";
    }

    # The app catching its failed $send does not hide the mistake.
    my $client = PAGI::Test::Client->new(app => async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'http';
        eval { await $send->({ type => 'http.response.start', status => 'x' }) };
        await $send->({ type => 'http.response.start', status => 200 });
        await $send->({ type => 'http.response.body', body => '' });
    });
    eval { $client->get('/') };
    like $@, qr/'status' must be an integer/, 'a caught bad event still croaks';

    my $fullflush = PAGI::Test::Client->new(app => bad_app({ type => 'http.fullflush' }, $start, { type => 'http.response.body' }),
                                            extensions => { fullflush => {} });
    is $fullflush->get('/')->status, 200, 'http.fullflush is accepted when the extension is advertised';
};

subtest 'app errors' => sub {
    my $dies = async sub { my ($scope) = @_; die "no\n" unless $scope->{type} eq 'http'; die "kaboom\n" };
    eval { PAGI::Test::Client->new(app => $dies)->get('/') };
    like $@, qr{GET /: the app died: kaboom}, 'raise_app_errors (default): the exception croaks';
    my $res = PAGI::Test::Client->new(app => $dies, raise_app_errors => 0)->get('/');
    is $res->status, 500, 'raise_app_errors => 0: a 500 as PAGI::Server sends';
    my $silent = async sub { my ($scope) = @_; die "no\n" unless $scope->{type} eq 'http' };
    eval { PAGI::Test::Client->new(app => $silent)->get('/') };
    like $@, qr/the app returned without sending http\.response\.start/, 'no response at all croaks';
    my $partial = bad_app({ type => 'http.response.start', status => 200 }, { type => 'http.response.body', body => 'a', more => 1 });
    eval { PAGI::Test::Client->new(app => $partial)->get('/') };
    like $@, qr/returned before the final http\.response\.body/, 'a response cut short croaks';
};

subtest 'timeout' => sub {
    my $hangs = async sub {
        my ($scope, $receive, $send) = @_;
        die "no\n" unless $scope->{type} eq 'http';
        await $receive->();
        await $send->({ type => 'http.response.start', status => 200 });
        await $send->({ type => 'http.response.body', body => 'a', more => 1 });
        await IO::Async::Loop->new->new_future;    # never done
    };
    my $client = PAGI::Test::Client->new(app => $hangs, timeout => 0.5);
    my $t0 = time;
    eval { $client->get('/slow') };
    like $@, qr{GET /slow: timed out after 0\.5s: the response was started \(status 200\) but the final body},
        'a response that never finishes times out with a clear error';
    ok time - $t0 < 5, 'within the timeout';
    eval { $client->get('/slow', timeout => 0.2) };
    like $@, qr/timed out after 0\.2s/, 'per-request timeout';
    eval { PAGI::Test::Client->new(app => $hangs, timeout => 'soon') };
    like $@, qr/timeout must be a positive number of seconds \(got 'soon'\)/, 'a bad timeout option croaks';
};

subtest 'constructor checks' => sub {
    eval { PAGI::Test::Client->new };
    like $@, qr/app is required/, 'app is required';
    eval { PAGI::Test::Client->new(app => $echo, colour => 'red') };
    like $@, qr/unknown option\(s\): colour/, 'unknown options croak';
    eval { PAGI::Test::Client->new(app => $echo, scheme => 'ftp') };
    like $@, qr/scheme must be 'http' or 'https'/, 'bad scheme';
    eval { PAGI::Test::Client->new(app => $echo, server => 'x') };
    like $@, qr/server must be an array reference/, 'bad server';
};

done_testing;
