package PAGI::Test::Client::Cookies;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Time::Local ();

our @CARP_NOT = qw(PAGI::Test::Client);

=head1 NAME

PAGI::Test::Client::Cookies - the cookie jar of PAGI::Test::Client

=head1 SYNOPSIS

    my $jar = $client->cookie_jar;
    $jar->set(theme => 'dark', path => '/');
    my $value = $jar->get('session');
    my %all   = %{ $jar->all };
    $jar->clear;

=head1 DESCRIPTION

Keeps the cookies an app sets with C<Set-Cookie> (RFC 6265, for one
host) and sends them back in one C<Cookie> header on later requests
whose path matches. C<Max-Age> (zero or negative deletes) and C<Expires>
(a date in the past deletes) are honoured; a C<Secure> cookie is sent only
when the client's scheme is C<https>. C<Domain> is kept but not checked:
the test client talks to one app. Values are stored exactly as sent (no
decoding).

=head1 METHODS

=head2 new

    my $jar = PAGI::Test::Client::Cookies->new;

=cut

sub new { bless { cookies => [] }, shift }

sub _live {
    my ($self) = @_;
    my $now = time;
    @{ $self->{cookies} } = grep { !defined $_->{expires} || $_->{expires} > $now } @{ $self->{cookies} };
    return @{ $self->{cookies} };
}

=head2 set

    $jar->set($name, $value, path => '/', secure => 0, max_age => 60);

Stores a cookie as if the app had set it. C<path> defaults to C</>.

=cut

sub set {
    my ($self, $name, $value, %attr) = @_;
    croak 'cookie jar set: name and value are required' unless defined $name && defined $value;
    my $expires = defined $attr{max_age} ? time + $attr{max_age} : undef;
    $self->_store({ name => $name, value => $value, path => $attr{path} // '/',
                    secure => $attr{secure} ? 1 : 0, http_only => 0, expires => $expires });
    return $self;
}

sub _store {
    my ($self, $cookie) = @_;
    my $list = $self->{cookies};
    @$list = grep { !($_->{name} eq $cookie->{name} && $_->{path} eq $cookie->{path}) } @$list;
    push @$list, $cookie unless defined $cookie->{expires} && $cookie->{expires} <= time;
}

=head2 get

    my $value = $jar->get($name);

The value of the cookie called C<$name> (the one with the longest path
when several paths hold one), or C<undef>.

=cut

sub get {
    my ($self, $name) = @_;
    my ($best) = sort { length $b->{path} <=> length $a->{path} } grep { $_->{name} eq $name } $self->_live;
    return $best ? $best->{value} : undef;
}

=head2 all

A hash reference of every live cookie, name to value.

=head2 clear

Forgets every cookie.

=cut

sub all {
    my ($self) = @_;
    my %all;
    $all{ $_->{name} } //= $_->{value} for sort { length $b->{path} <=> length $a->{path} } $self->_live;
    return \%all;
}

sub clear { $_[0]{cookies} = []; $_[0] }

=head2 header_for

    my $cookie_header = $jar->header_for($path, $scheme);   # undef when none

The C<Cookie> header value for a request: cookies whose path matches,
longest path first (RFC 6265 5.4).

=cut

sub header_for {
    my ($self, $path, $scheme) = @_;
    my $secure = ($scheme // '') =~ /\A(?:https|wss)\z/;
    my @send = sort { length $b->{path} <=> length $a->{path} }
        grep { _path_matches($path, $_->{path}) && ($secure || !$_->{secure}) } $self->_live;
    return @send ? join('; ', map { "$_->{name}=$_->{value}" } @send) : undef;
}

# RFC 6265 5.1.4.
sub _path_matches {
    my ($request_path, $cookie_path) = @_;
    return 1 if $request_path eq $cookie_path;
    return 0 unless index($request_path, $cookie_path) == 0;
    return 1 if $cookie_path =~ m{/\z};
    return substr($request_path, length $cookie_path, 1) eq '/';
}

=head2 store_response

    $jar->store_response(\@headers, $request_path);

Reads every C<set-cookie> pair of a response's headers. A cookie without
C<Path> gets the directory of the request path (RFC 6265 5.1.4).

=cut

sub store_response {
    my ($self, $headers, $request_path) = @_;
    for my $pair (@$headers) {
        next unless lc $pair->[0] eq 'set-cookie';
        my $cookie = _parse($pair->[1], $request_path) or next;
        $self->_store($cookie);
    }
}

sub _parse {
    my ($line, $request_path) = @_;
    my ($pair, @attrs) = split /\s*;\s*/, $line;
    return undef unless defined $pair && $pair =~ /\A\s*([^=]+?)\s*=\s*(.*?)\s*\z/;
    my %cookie = (name => $1, value => $2, secure => 0, http_only => 0);
    $cookie{value} = $1 if $cookie{value} =~ /\A"(.*)"\z/;
    my ($max_age, $expires);
    for my $attr (@attrs) {
        my ($k, $v) = split /\s*=\s*/, $attr, 2;
        $k = lc $k;
        if    ($k eq 'path' && defined $v && $v =~ m{\A/}) { $cookie{path} = $v }
        elsif ($k eq 'domain')   { $cookie{domain} = $v }
        elsif ($k eq 'secure')   { $cookie{secure} = 1 }
        elsif ($k eq 'httponly') { $cookie{http_only} = 1 }
        elsif ($k eq 'samesite') { $cookie{same_site} = $v }
        elsif ($k eq 'max-age' && defined $v && $v =~ /\A-?\d+\z/) { $max_age = $v }
        elsif ($k eq 'expires' && defined $v) { $expires = _http_date($v) }
    }
    # Max-Age wins over Expires (RFC 6265 5.3 step 3).
    $cookie{expires} = defined $max_age ? time + $max_age : $expires;
    $cookie{path} //= _default_path($request_path);
    return \%cookie;
}

sub _default_path {
    my ($path) = @_;
    return '/' unless defined $path && $path =~ m{\A/} && $path =~ tr{/}{} > 1;
    return $path =~ s{/[^/]*\z}{}r;
}

my %MONTH = (jan => 0, feb => 1, mar => 2, apr => 3, may => 4, jun => 5,
             jul => 6, aug => 7, sep => 8, oct => 9, nov => 10, dec => 11);

# IMF-fixdate and the older "DD-Mon-YYYY" form; an unreadable date is
# treated as already past, which deletes the cookie as browsers do for 0.
sub _http_date {
    my ($date) = @_;
    my ($d, $mon, $y, $h, $m, $s) = $date =~ /(\d{1,2})[\s-]+([A-Za-z]{3})[\s-]+(\d{2,4})\s+(\d{1,2}):(\d{2}):(\d{2})/;
    return 0 unless defined $s && exists $MONTH{ lc $mon };
    $y += $y < 70 ? 2000 : 1900 if $y < 100;
    return eval { Time::Local::timegm($s, $m, $h, $d, $MONTH{ lc $mon }, $y) } // 0;
}

1;
