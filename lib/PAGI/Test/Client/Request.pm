package PAGI::Test::Client::Request;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp qw(croak);
use Encode ();
use PAGI::Test::Client::JSON;

our @CARP_NOT = qw(PAGI::Test::Client PAGI::Test::Client::HTTP PAGI::Test::Client::WebSocket PAGI::Test::Client::SSE);

=head1 NAME

PAGI::Test::Client::Request - internal: turns test client options into scope fields and body bytes

=head1 DESCRIPTION

Internal to L<PAGI::Test::Client>: the path and query (C<path>,
C<raw_path>, C<query_string>), request header lists, and request bodies
from C<json>, C<form>, C<multipart> or C<body>. All functions croak with a
message naming the option at fault.

=cut

# Bytes a request-target may carry as they are (RFC 3986 pchar plus '/'
# and '%', so an already-encoded path is left alone).
my $PATH_SAFE  = qr{[A-Za-z0-9\-._~!\$&'()*+,;=:@/%]};
my $QUERY_SAFE = qr{[A-Za-z0-9\-._~]};

# Paths, query and form values are text: characters, sent as UTF-8. Bytes
# that must stay bytes are given percent-encoded (or as a file part).
sub _bytes_of {
    my ($text) = @_;
    return Encode::encode('UTF-8', "$text");
}

sub _header_bytes {
    my ($v, $option, $name) = @_;
    croak "$option: '$name' must be bytes (it has characters above 255; encode it first)"
        if utf8::is_utf8($v) && $v =~ /[^\x00-\xFF]/;
    my $copy = "$v";
    utf8::downgrade($copy);
    return $copy;
}

sub _escape {
    my ($bytes, $safe) = @_;
    return join '', map { /$safe/ ? $_ : sprintf('%%%02X', ord) } split //, $bytes;
}

# ($path, $raw_path, $query_string) for a path like '/a/b?x=1' plus the
# query option, with the path decoded as PAGI-SPEC 2.3 says.
sub target {
    my ($path, $query) = @_;
    croak "path is required" unless defined $path && !ref $path;
    my ($p, $q) = split /\?/, $path, 2;
    croak "path must start with '/' (got '$path')" unless $p =~ m{\A/};
    my $raw_path = _escape(_bytes_of($p), $PATH_SAFE);
    (my $path_bytes = $raw_path) =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge;
    # Characters when the bytes are UTF-8, else the bytes (PAGI-SPEC 2.3).
    my $chars = $path_bytes =~ /[^\x00-\x7F]/
        ? eval { Encode::decode('UTF-8', "$path_bytes", Encode::FB_CROAK()) } : undef;
    my $query_string = join '&', grep { length } query_string($q), query_string($query);
    return ($chars // $path_bytes, $raw_path, $query_string);
}

# name=value pairs from a hash (sorted by name; array values repeat the
# name), an array of pairs, or a ready string.
sub _pairs {
    my ($spec, $option) = @_;
    my @flat;
    if (ref $spec eq 'HASH') {
        for my $k (sort keys %$spec) {
            push @flat, map { ($k, $_) } ref $spec->{$k} eq 'ARRAY' ? @{ $spec->{$k} } : $spec->{$k};
        }
    }
    elsif (ref $spec eq 'ARRAY') {
        croak "$option: an array reference needs name => value pairs (it has an odd number of elements)" if @$spec % 2;
        @flat = @$spec;
    }
    else {
        croak "$option must be a hash reference, an array reference of name => value pairs or a string";
    }
    my @pairs;
    while (my ($k, $v) = splice @flat, 0, 2) {
        croak "$option: the value of '$k' is undefined" unless defined $v;
        croak "$option: the value of '$k' must be a string, not a reference" if ref $v;
        push @pairs, [ $k, $v ];
    }
    return @pairs;
}

sub _urlencode {
    my ($spec, $option, $space) = @_;
    return join '&', map {
        join '=', map { my $e = _escape(_bytes_of($_), $QUERY_SAFE); $e =~ s/%20/+/g if $space; $e } @$_
    } _pairs($spec, $option);
}

sub query_string {
    my ($query) = @_;
    return '' unless defined $query;
    return _escape(_bytes_of($query), qr{[^ #\x00-\x1F\x7F-\xFF]}) unless ref $query;
    return _urlencode($query, 'query', 0);
}

# [[lc name, value], ...] from an array of pairs, a flat array or a hash.
sub header_pairs {
    my ($spec, $option) = @_;
    return () unless defined $spec;
    my @pairs;
    if (ref $spec eq 'ARRAY' && @$spec && ref $spec->[0] eq 'ARRAY') {
        for my $p (@$spec) {
            croak "$option: each entry must be a [name, value] pair" unless ref $p eq 'ARRAY' && @$p == 2;
            push @pairs, [@$p];
        }
    }
    else {
        @pairs = _pairs($spec, $option);
    }
    for my $p (@pairs) {
        my ($name, $value) = @$p;
        croak "$option: a header name must be a non-empty string" unless defined $name && !ref $name && length $name;
        croak "$option: the value of '$name' must be a string" unless defined $value && !ref $value;
        croak "$option: '$name' contains CR, LF or a null byte" if "$name$value" =~ /[\r\n\0]/;
        $p = [ lc _header_bytes($name, $option, $name), _header_bytes($value, $option, $name) ];
    }
    return @pairs;
}

# Later lists replace earlier headers of the same name.
sub merge_headers {
    my (@lists) = @_;
    my @merged;
    for my $list (@lists) {
        my %new = map { $_->[0] => 1 } @$list;
        @merged = ((grep { !$new{ $_->[0] } } @merged), @$list);
    }
    return @merged;
}

# ($bytes, $content_type) for the body options of one request.
sub body {
    my ($o) = @_;
    my @given = grep { exists $o->{$_} } qw(json form multipart body);
    croak 'only one of json, form, multipart and body may be given (got ' . join(', ', @given) . ')' if @given > 1;
    return ('', undef) unless @given;
    my $kind = $given[0];
    my $value = $o->{$kind};
    if ($kind eq 'json') {
        return (PAGI::Test::Client::JSON->bytes->encode($value), 'application/json');
    }
    if ($kind eq 'form') {
        return (_urlencode($value, 'form', 1), 'application/x-www-form-urlencoded');
    }
    if ($kind eq 'multipart') {
        return multipart($value);
    }
    croak 'body must be a byte string' if ref $value || !defined $value;
    croak 'body must be bytes (it has characters above 255; encode it first)'
        if utf8::is_utf8($value) && $value =~ /[^\x00-\xFF]/;
    return ($value, undef);
}

my $boundary_count = 0;

# multipart/form-data (RFC 7578). Plain values are text, sent as UTF-8;
# a hash value is a file part: { filename, content | path, content_type }.
sub multipart {
    my ($spec) = @_;
    my @flat = ref $spec eq 'HASH' ? map { ($_, $spec->{$_}) } sort keys %$spec
             : ref $spec eq 'ARRAY' ? @$spec
             : croak 'multipart must be an array reference of name => value pairs';
    croak 'multipart: it needs name => value pairs (odd number of elements)' if @flat % 2;
    my @parts;
    while (my ($name, $value) = splice @flat, 0, 2) {
        croak 'multipart: a part name must be a string' unless defined $name && !ref $name;
        push @parts, _part($name, $value);
    }
    my $boundary;
    do { $boundary = sprintf 'PAGITestClient%d%08x', ++$boundary_count, int rand 0xFFFFFFFF }
        while grep { index($_, $boundary) >= 0 } @parts;
    my $body = join '', map { "--$boundary\r\n$_\r\n" } @parts;
    return ("$body--$boundary--\r\n", "multipart/form-data; boundary=$boundary");
}

sub _part {
    my ($name, $value) = @_;
    my $qname = _quoted(_bytes_of($name));
    croak "multipart: the value of '$name' is undefined" unless defined $value;
    if (!ref $value) {
        return qq{Content-Disposition: form-data; name="$qname"\r\n\r\n} . _bytes_of($value);
    }
    croak "multipart: the value of '$name' must be a string or a file hash { filename, content, content_type }"
        unless ref $value eq 'HASH';
    my %file = %$value;
    if (defined $file{path} && !exists $file{content}) {
        open my $fh, '<:raw', $file{path} or croak "multipart: cannot read '$file{path}' for part '$name': $!";
        local $/;
        $file{content} = <$fh>;
        $file{filename} //= $file{path} =~ s{.*/}{}r;
    }
    croak "multipart: the file part '$name' needs 'content' (or 'path')" unless defined $file{content};
    croak "multipart: the content of file part '$name' must be bytes (encode it first)"
        if ref $file{content} || (utf8::is_utf8($file{content}) && $file{content} =~ /[^\x00-\xFF]/);
    my $filename = _quoted(_bytes_of($file{filename} // $name));
    my $type = $file{content_type} // 'application/octet-stream';
    croak "multipart: the content_type of '$name' contains CR or LF" if $type =~ /[\r\n]/;
    return qq{Content-Disposition: form-data; name="$qname"; filename="$filename"\r\n}
         . "Content-Type: $type\r\n\r\n$file{content}";
}

# Quoted-string form of a name, as browsers send it (RFC 7578 4.2).
sub _quoted {
    my ($s) = @_;
    $s =~ s/"/%22/g;
    $s =~ s/\r/%0D/g;
    $s =~ s/\n/%0A/g;
    return $s;
}

1;
